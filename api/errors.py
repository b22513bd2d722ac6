"""The API doors' errors: one place decides what each refusal says, each door words it in its shape.

- REST (/api/, with the model-compose routes): `{"detail": "..."}`, and 422 with `errors` (one per
  field) for a request that does not validate.
- OpenAI-compatible (/v1/): `{"error": {"message", "type", "param", "code"}}`, and 400 for a request
  that does not validate, as OpenAI's own API answers, so that its SDKs raise the right exception.

Both get the same statuses and messages otherwise: 400 for a body that is not JSON, 401 without a
valid token (or, for REST, a session), 404 (also for a `model` no engine serves now:
`model_not_found`), 413 for a body over API_MAX_BODY_BYTES (refused by
api/middleware.py before any view reads it), and 429 with `Retry-After` when the caller may not
start another answer now (chat/limits.py).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from chat.attachments import FileRefused
from chat.limits import TooManyAnswers
from engine.catalog import NoSuchModel


class ApiError(Exception):
    """A refusal; each door answers it in its own shape (REST keeps only the status and message)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.errors, self.retry_after = errors, retry_after


def _rest_body(error: ApiError) -> dict[str, Any]:
    if error.errors is None:
        return {"detail": error.message}
    return {"detail": error.message, "errors": error.errors}


def _openai_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


@dataclass(frozen=True)
class Door:
    """One door's error shape."""

    path_prefix: str
    body: Callable[[ApiError], dict[str, Any]]
    invalid_status: int  # for a request that does not validate
    sign_in: str  # what a 401 tells the caller to send

    def response(self, error: ApiError) -> HttpResponse:
        response = JsonResponse(self.body(error), status=error.status, content_type="application/json; charset=utf-8")
        if error.status == 401:
            response["WWW-Authenticate"] = "Bearer"
        if error.retry_after is not None:
            response["Retry-After"] = str(error.retry_after)
        return response


REST = Door(
    path_prefix="/api/",
    body=_rest_body,
    invalid_status=422,
    sign_in="Authentication required: send `Authorization: Bearer <token>` "
    "(python manage.py createtoken USERNAME), or log in.",
)
OPENAI = Door(
    path_prefix="/v1/",
    body=_openai_body,
    invalid_status=400,
    sign_in="Invalid or missing API key: send `Authorization: Bearer <token>` (python manage.py createtoken USERNAME).",
)
DOORS = (REST, OPENAI)


def door_at(path: str) -> Door | None:
    return next((door for door in DOORS if path.startswith(door.path_prefix)), None)


def field_name(loc: list[str]) -> str | None:
    """The field a validation error is about, or None for the body as a whole."""
    # ninja's loc is ["body", <parameter name>, field, ...], or ["query" or "path", field].
    if loc[:1] == ["body"]:
        return ".".join(loc[2:]) or None
    return ".".join(loc[1:]) or ".".join(loc)


def refusal(door: Door, exc: Exception) -> ApiError:
    """What a door answers for an exception a view (or django-ninja) raised."""
    match exc:
        case ApiError():
            return exc
        case NoSuchModel():
            # OpenAI's answer for a model it does not have (or not now), on both doors.
            return ApiError(404, exc.message, param="model", code="model_not_found")
        case FileRefused():
            # 400, 404 (another person's file, or none), 413 or 415, with a sentence for a person.
            return ApiError(exc.status, exc.message, param="files", code="file_refused")
        case TooManyAnswers():
            # OpenAI's own type and code for too many requests; its SDKs retry after Retry-After.
            return ApiError(429, exc.message, type="requests", code="rate_limit_exceeded", retry_after=exc.retry_after)
        case AuthenticationError():
            return ApiError(401, door.sign_in, code="invalid_api_key")
        case HttpError(status_code=400) if isinstance(exc.__cause__, ValueError):
            # django-ninja's "Cannot parse request body".
            return ApiError(400, f"The request body is not valid JSON: {exc.__cause__}")
        case HttpError():
            return ApiError(exc.status_code, str(exc))
        case ValidationError():
            errors = [
                {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
                for error in exc.errors
            ]
            named = [(field_name(error["loc"]), error["msg"]) for error in errors]
            message = "; ".join(f"{field or 'body'}: {msg}" for field, msg in named)
            # OpenAI's shape names one field: the first.
            return ApiError(door.invalid_status, message, param=named[0][0], code="invalid_value", errors=errors)
        case Http404():
            return ApiError(404, "Not found.")
    raise TypeError(f"no refusal for {exc!r}")


def handle_errors(api: NinjaAPI, door: Door) -> None:
    """Answer the API's errors in the door's shape."""

    def handler(request: HttpRequest, exc: Exception | type[Exception]) -> HttpResponse:
        # ninja's type lets a handler be given the class too; it passes what was raised, and a
        # raised class is always made an instance by Python.
        assert isinstance(exc, Exception)
        return door.response(refusal(door, exc))

    for kind in (
        ApiError,
        AuthenticationError,
        HttpError,
        ValidationError,
        Http404,
        TooManyAnswers,
        NoSuchModel,
        FileRefused,
    ):
        api.add_exception_handler(kind, handler)
