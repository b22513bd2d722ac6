"""The REST API under /api/: conversations and their messages, and model-compose's workflow routes.

Every operation is thin: the schemas in api/schemas.py check the request with the page's rules,
chat/turns.py runs the turn, and the answer streams through chat/sse.py as it does to the page. A
conversation or an answer is always reached through chat/ownership.py, so another user's is a 404
on every route. The operations that start, follow or stop a turn are async: the turn runs on the
server's event loop.

Errors are JSON `{"detail": "..."}` (api/errors.py): 400 for a body that is not JSON, 401 without a
token or a session, 404, 413 for a body over API_MAX_BODY_BYTES, 422 (with `errors`, one per field)
for a request that does not validate.
"""

from django.http import HttpRequest
from ninja import NinjaAPI, Path
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import Field

from api import delivery, workflows
from api.auth import SessionAuth, TokenAuth
from api.errors import REST, handle_errors
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
from chat import ownership, sse, turns
from chat.models import Conversation

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
handle_errors(api, REST)

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


class Page(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        limit: int = Field(20, ge=1, le=100)
        offset: int = Field(0, ge=0, le=MAX_ID)


def conversation_id() -> int:
    return Path(..., ge=1, le=MAX_ID)


# --- Conversations ------------------------------------------------------------------------------


@api.get("/conversations", response={200: list[ConversationOut], **ERRORS}, tags=["conversations"])
@paginate(Page)
def list_conversations(request: HttpRequest):
    """The user's conversations, most recently active first."""
    return Conversation.objects.owned_by(request.auth).newest_first()


@api.post("/conversations", response={201: ConversationOut, **ERRORS}, tags=["conversations"])
def create_conversation(request: HttpRequest, data: ConversationIn):
    conversation = Conversation(owner=request.auth, title=data.title, system_prompt=data.system_prompt)
    data.apply_to(conversation)
    conversation.save()
    return 201, conversation


@api.get("/conversations/{conversation_id}", response={200: ConversationDetail, **ERRORS}, tags=["conversations"])
def read_conversation(request: HttpRequest, conversation_id: int = conversation_id()):
    return ownership.conversation_or_404(request.auth, conversation_id)


@api.patch("/conversations/{conversation_id}", response={200: ConversationOut, **ERRORS}, tags=["conversations"])
def change_conversation(request: HttpRequest, data: ConversationChange, conversation_id: int = conversation_id()):
    """Rename it (`title`), or change its system prompt or generation settings for the next turns."""
    conversation = ownership.conversation_or_404(request.auth, conversation_id)
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
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
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
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    data.apply_to(conversation)
    prompt, answer = await turns.start_turn(conversation, data.prompt)
    if data.stream:
        response = sse.response(sse.turn_events(answer))
        response["X-Conversation-Id"] = str(conversation.pk)
        response["X-Message-Id"] = str(answer.pk)
        return response
    return TurnOut(conversation_id=conversation.pk, prompt=prompt, answer=await delivery.ended(answer))


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
    """Follow an answer, from its text so far (or from where `Last-Event-ID` says the client left
    off); an answer that has ended streams whole, then `done`."""
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    return sse.response(sse.turn_events(answer, since=sse.resumed_from(request)))


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
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    return await turns.stop_turn(answer)


api.add_router("", workflows.router)
