"""The REST API under /api/: conversations and their messages, and model-compose's workflow routes.

Every operation is thin: the schemas in api/schemas.py check the request with the page's bounds,
chat/turns.py runs the turn, and the answer streams through chat/sse.py as it does to the page. A
conversation is always reached through `owned_by(request.auth)`, and an answer through
`answers_of(request.auth)`, so another user's is a 404 on every route. The operations that start,
follow or stop a turn are async: the turn runs on the server's event loop.

Errors are JSON `{"detail": "..."}`: 400 for a body that is not JSON, 401 without a token or a
session, 404, 413 for a body over API_MAX_BODY_BYTES, 422 (with `errors`, one per field) for a
request that does not validate.
"""

from django.http import Http404, HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import aget_object_or_404, get_object_or_404
from ninja import NinjaAPI, Path
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import Field

from api import answers, history, workflows
from api.auth import SessionAuth, TokenAuth
from api.schemas import (
    ERRORS,
    MAX_ID,
    ConversationChange,
    ConversationDetail,
    ConversationIn,
    ConversationOut,
    MessageIn,
    MessageOut,
    TurnOut,
)
from chat import sse, turns
from chat.models import Conversation, Message

api = NinjaAPI(
    title="Chat site API",
    version="1",
    description=(
        "Conversations with the site's vLLM model, as on the chat page, and model-compose's workflow routes "
        "(`/api/workflows/runs`, `/api/tasks/{task_id}`). Authenticate with `Authorization: Bearer <token>` "
        "(`python manage.py createtoken USERNAME`, or the admin) or the browser's session."
    ),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    auth=[TokenAuth(), SessionAuth()],
)

# One server-sent event of an answer (OpenAPI 3.1: the schema of an event stream is one event's).
ANSWER_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["delta", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def streamed(description: str, **response) -> dict:
    return {
        "responses": {
            200: {"description": description, "content": {"text/event-stream": {"schema": ANSWER_EVENT}}, **response},
        }
    }


# From a JSON answer to the routes that follow and stop it.
ANSWER_LINKS = {
    name: {
        "operationId": f"api_rest_{name}_message",
        "parameters": {"conversation_id": "$response.body#/conversation_id", "message_id": "$response.body#/answer/id"},
    }
    for name in ("follow", "stop")
}


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = api.create_response(
        request,
        {
            "detail": "Authentication required: send `Authorization: Bearer <token>` "
            "(python manage.py createtoken USERNAME), or log in."
        },
        status=401,
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    detail = str(exc)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # django-ninja's "Cannot parse request body".
        detail = f"The request body is not valid JSON: {exc.__cause__}"
    return api.create_response(request, {"detail": detail}, status=exc.status_code)


@api.exception_handler(ValidationError)
def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors
    ]
    detail = "; ".join(f"{field_name(error['loc'])}: {error['msg']}" for error in errors)
    return api.create_response(request, {"detail": detail, "errors": errors}, status=422)


def field_name(loc: list[str]) -> str:
    # ninja's loc is ["body", <parameter name>, field, ...], or ["query" or "path", field].
    if loc[:1] == ["body"]:
        return ".".join(loc[2:]) or "body"
    return ".".join(loc[1:]) or ".".join(loc)


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": "Not found."}, status=404)


class Page(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        limit: int = Field(20, ge=1, le=100)
        offset: int = Field(0, ge=0, le=MAX_ID)


def conversation_id() -> int:
    return Path(..., ge=1, le=MAX_ID)


def _owned(request: HttpRequest):
    return Conversation.objects.owned_by(request.auth)


async def _owned_conversation(request: HttpRequest, pk: int) -> Conversation:
    return await aget_object_or_404(_owned(request), pk=pk)


async def _owned_answer(request: HttpRequest, pk: int, message_pk: int) -> Message:
    return await aget_object_or_404(Message.objects.answers_of(request.auth), pk=message_pk, conversation=pk)


# --- Conversations ------------------------------------------------------------------------------


@api.get("/conversations", response={200: list[ConversationOut], **ERRORS}, tags=["conversations"])
@paginate(Page)
def list_conversations(request: HttpRequest):
    """The user's conversations, most recently active first."""
    return _owned(request).newest_first()


@api.post("/conversations", response={201: ConversationOut, **ERRORS}, tags=["conversations"])
def create_conversation(request: HttpRequest, data: ConversationIn):
    conversation = Conversation(owner=request.auth, title=data.title, system_prompt=data.system_prompt)
    data.apply_to(conversation)
    conversation.save()
    return 201, conversation


@api.get("/conversations/{conversation_id}", response={200: ConversationDetail, **ERRORS}, tags=["conversations"])
def read_conversation(request: HttpRequest, conversation_id: int = conversation_id()):
    return get_object_or_404(_owned(request).prefetch_related("messages"), pk=conversation_id)


@api.patch("/conversations/{conversation_id}", response={200: ConversationOut, **ERRORS}, tags=["conversations"])
def change_conversation(request: HttpRequest, data: ConversationChange, conversation_id: int = conversation_id()):
    """Rename it (`title`), or change its system prompt or generation settings for the next turns."""
    conversation = get_object_or_404(_owned(request), pk=conversation_id)
    if data.title is not None:
        conversation.title = data.title
    if data.system_prompt is not None:
        conversation.system_prompt = data.system_prompt
    data.apply_to(conversation)
    conversation.save()
    return conversation


@api.delete("/conversations/{conversation_id}", response={204: None, **ERRORS}, tags=["conversations"])
async def delete_conversation(request: HttpRequest, conversation_id: int = conversation_id()):
    """Deletes it with its messages, stopping an answer still being generated."""
    conversation = await _owned_conversation(request, conversation_id)
    await turns.stop_turns_in(conversation)
    await conversation.adelete()
    return 204, None


# --- Messages -----------------------------------------------------------------------------------


@api.post(
    "/conversations/{conversation_id}/messages",
    response={200: TurnOut, **ERRORS},
    openapi_extra=streamed(
        'JSON, or with `stream: true` Server-Sent Events: `delta` (`{"text"}`) events, then `done` or '
        "`error`, as the chat page receives them.",
        links=ANSWER_LINKS,
    ),
    tags=["messages"],
)
async def send_message(request: HttpRequest, data: MessageIn, conversation_id: int = conversation_id()):
    """Send a prompt; the answer comes back once complete, or as it is generated with `stream: true`.

    Generation settings given here are saved on the conversation, as the page does. The answer is
    saved whatever happens to the request: a client that goes away stops following it, not
    generating it (stop it with `.../stop`).
    """
    conversation = await _owned_conversation(request, conversation_id)
    data.apply_to(conversation)
    prompt, answer = await turns.start_turn(conversation, data.prompt)
    if data.stream:
        response = sse.response(sse.turn_events(answer))
        response["X-Conversation-Id"] = str(conversation.pk)
        response["X-Message-Id"] = str(answer.pk)
        return response
    return TurnOut(conversation_id=conversation.pk, prompt=prompt, answer=await answers.ended(answer))


@api.get(
    "/conversations/{conversation_id}/messages/{message_id}/stream",
    response={200: None, **ERRORS},
    openapi_extra=streamed("Server-Sent Events: the text so far, then each new delta, then `done` or `error`."),
    tags=["messages"],
)
async def follow_message(
    request: HttpRequest,
    conversation_id: int = conversation_id(),
    message_id: int = Path(..., ge=1, le=MAX_ID),
):
    """Follow an answer, from its text so far; an answer that has ended streams whole, then `done`."""
    return sse.response(sse.turn_events(await _owned_answer(request, conversation_id, message_id)))


@api.post(
    "/conversations/{conversation_id}/messages/{message_id}/stop",
    response={200: MessageOut, **ERRORS},
    tags=["messages"],
)
async def stop_message(
    request: HttpRequest,
    conversation_id: int = conversation_id(),
    message_id: int = Path(..., ge=1, le=MAX_ID),
):
    """Stop an answer being generated; its text so far is kept, in status `stopped`."""
    return await turns.stop_turn(await _owned_answer(request, conversation_id, message_id))


api.add_router("", workflows.router)
api.add_router("", history.router)  # search, export and import
api.add_exception_handler(MultiPartParserError, history.malformed_upload)
