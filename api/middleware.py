"""The API's body limit: a body over API_MAX_BODY_BYTES is refused with 413 before any view parses it.

Only the API's doors (/api/ and the OpenAI-compatible /v1/) are limited; each gets the error in its
own shape. The chat page's forms keep Django's own limits.
"""

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import sync_and_async_middleware

from chat import imports

REST_PREFIX = "/api/"
OPENAI_PREFIX = "/v1/"
# Its body is a file to import: it may be as large as an import (chat/imports.py).
IMPORT_PATH = "/api/import"


@sync_and_async_middleware
def limit_api_body(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest):
            return _refusal(request) or await get_response(request)

    else:

        def middleware(request: HttpRequest):
            return _refusal(request) or get_response(request)

    return middleware


def _refusal(request: HttpRequest) -> JsonResponse | None:
    if not request.path_info.startswith((REST_PREFIX, OPENAI_PREFIX)):
        return None
    limit = imports.upload_limit() if request.path_info == IMPORT_PATH else settings.API_MAX_BODY_BYTES
    if _size(request, limit) <= limit:
        return None
    message = f"The request body is too large: at most {limit} bytes are accepted."
    if request.path_info.startswith(OPENAI_PREFIX):
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
        return JsonResponse({"error": error}, status=413)
    return JsonResponse({"detail": message}, status=413)


def _size(request: HttpRequest, limit: int) -> float:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return declared  # refused without reading it
    if request.path_info == IMPORT_PATH:
        # A file upload: Django spools it to disk as it parses it, where reading `body` would hold
        # it in memory (and refuse it over DATA_UPLOAD_MAX_MEMORY_SIZE); the import measures the file.
        return declared
    try:
        # A chunked body declares no length: measure what arrived.
        return len(request.body)
    except RequestDataTooBig:
        return float("inf")
