"""The REST API under /api/: conversations and their messages, and model-compose's workflow routes.

Every operation is thin: the schemas in api/schemas.py check the request with the page's rules,
chat/turns.py runs the turn, and the answer streams through chat/sse.py as it does to the page. A
conversation or an answer is always reached through chat/ownership.py, so another user's is a 404
on every route. The operations that start, follow or stop a turn are async: the turn runs on the
server's event loop.

Errors are JSON `{"detail": "..."}` (api/errors.py): 400 for a body that is not JSON, 401 without a
token or a session, 404 (also for a `model` no engine serves now), 413 for a body over API_MAX_BODY_BYTES,
422 (with `errors`, one per field) for a request that does not validate, 429 (with `Retry-After`)
for a prompt over the caller's limits on answers (chat/limits.py).
"""

from typing import Any

from asgiref.sync import async_to_sync
from django.http import StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI, Query
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import Field

from api import delivery, feedback, files, history, shelves, workflows
from api import presets as api_presets
from api.auth import AuthenticatedRequest, SessionAuth, TokenAuth
from api.errors import REST, ApiError, handle_errors
from api.schemas import (
    CONFLICTS,
    ERRORS,
    MAX_ID,
    STARTS_AN_ANSWER,
    ConversationChange,
    ConversationDetail,
    ConversationIn,
    ConversationOut,
    EditIn,
    ErrorOut,
    MessageIn,
    MessageOut,
    RegenerateIn,
    ShownMessageOut,
    TurnOut,
    path_id,
)
from chat import attachments, branches, ownership, presets, sse, turns
from chat.models import Conversation, ConversationQuerySet, Message
from engine import catalog

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


def streamed(description: str, **response: Any) -> dict[str, Any]:
    return {
        "responses": {
            200: {"description": description, "content": {"text/event-stream": {"schema": ANSWER_EVENT}}, **response},
        }
    }


# From a JSON turn to the routes that follow, stop or regenerate its answer, edit its prompt or
# show either.
ANSWER_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {
            "conversation_id": "$response.body#/conversation_id",
            "message_id": f"$response.body#/{part}/id",
        },
    }
    for name, operation, part in [
        ("follow", "api_rest_follow_message", "answer"),
        ("stop", "api_rest_stop_message", "answer"),
        ("regenerate", "api_rest_regenerate_answer", "answer"),
        ("edit", "api_rest_edit_prompt", "prompt"),
        ("show", "api_rest_show_message", "prompt"),
    ]
}


class Page(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        limit: int = Field(20, ge=1, le=100)
        offset: int = Field(0, ge=0, le=MAX_ID)


# --- Conversations ------------------------------------------------------------------------------


@api.get("/conversations", response={200: list[ConversationOut], **ERRORS}, tags=["conversations"])
@paginate(Page)
def list_conversations(request: AuthenticatedRequest, filters: Query[shelves.ListFilter]) -> ConversationQuerySet:
    """The user's conversations, most recently active first: by default those not archived."""
    return filters.apply(Conversation.objects.owned_by(request.auth)).newest_first()


@api.post("/conversations", response={201: ConversationOut, **ERRORS}, tags=["conversations"])
def create_conversation(request: AuthenticatedRequest, data: ConversationIn) -> tuple[int, Conversation]:
    conversation = Conversation(owner=request.auth, title=data.title)
    conversation.title_set_by_person = bool(data.title)  # an empty one is named from the first prompt
    if data.preset_id is not None:  # its settings, then the request's own over them
        presets.apply_to(presets.preset_or_404(request.auth, data.preset_id), conversation)
    conversation.change_settings(system_prompt=data.system_prompt)
    data.apply_to(conversation)
    async_to_sync(catalog.check)(conversation.model)  # a model no engine serves now: 404
    conversation.save()
    return 201, conversation


def _detail(conversation: Conversation, branch: branches.Branch, tree: list[Message] | None) -> ConversationDetail:
    shown = [
        ShownMessageOut.model_validate({**MessageOut.model_validate(message).model_dump(), "versions": versions.ids})
        for message, versions in branch
    ]
    return ConversationDetail.model_validate(
        {
            **ConversationOut.model_validate(conversation).model_dump(),
            "branch_tip_id": branch[-1][0].pk if branch else None,
            "messages": shown,
            "tree": None if tree is None else [MessageOut.model_validate(message) for message in tree],
        }
    )


@api.get("/conversations/{conversation_id}", response={200: ConversationDetail, **ERRORS}, tags=["conversations"])
def read_conversation(
    request: AuthenticatedRequest, conversation_id: int = path_id(), tree: bool = False
) -> ConversationDetail:
    """The conversation with the branch shown (as on the page); with `tree=true`, every message too."""
    conversation = ownership.conversation_or_404(request.auth, conversation_id)
    messages = list(conversation.messages.order_by("pk").prefetch_related("attachments")) if tree else None
    return _detail(conversation, branches.shown_branch(conversation), messages)


@api.patch("/conversations/{conversation_id}", response={200: ConversationOut, **CONFLICTS}, tags=["conversations"])
def change_conversation(
    request: AuthenticatedRequest, data: ConversationChange, conversation_id: int = path_id()
) -> Conversation:
    """Rename it (`title`), or change its system prompt or generation settings for the next turns."""
    if data.model is not None:
        async_to_sync(catalog.check)(data.model)  # a model no engine serves now: 404
    conversation = ownership.conversation_or_404(request.auth, conversation_id)
    shelves.change(request.auth, conversation, data)  # pinned, folder_id, archived (api/shelves.py)
    renamed = ["title", "title_set_by_person"] if data.title is not None else []
    if data.title is not None:
        conversation.title = data.title
        conversation.title_set_by_person = True
    conversation.change_settings(system_prompt=data.system_prompt)
    data.apply_to(conversation)
    # Only what the request changes: a whole save would write back this copy's title, branch and
    # settings over the naming's, a turn's or another request's change made since it was read.
    if changed := [*renamed, *conversation.changed_settings]:  # pinning or filing it is no activity
        conversation.save(update_fields=[*changed, "updated_at"])
    return conversation


@api.delete("/conversations/{conversation_id}", response={204: None, **ERRORS}, tags=["conversations"])
async def delete_conversation(request: AuthenticatedRequest, conversation_id: int = path_id()) -> tuple[int, None]:
    """Deletes it with its messages, stopping an answer still being generated."""
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    await turns.stop_turns_in(conversation)
    await conversation.adelete()
    return 204, None


# --- Messages -----------------------------------------------------------------------------------


@api.post(
    "/conversations/{conversation_id}/messages",
    response={200: TurnOut, **STARTS_AN_ANSWER},
    openapi_extra=streamed(
        'JSON, or with `stream: true` Server-Sent Events: `delta` (`{"text"}`) events, then `done` or '
        "`error`, as the chat page receives them.",
        links=ANSWER_LINKS,
    ),
    tags=["messages"],
)
async def send_message(
    request: AuthenticatedRequest, data: MessageIn, conversation_id: int = path_id()
) -> StreamingHttpResponse | TurnOut:
    """Send a prompt; the answer comes back once complete, or as it is generated with `stream: true`.

    Generation settings given here are saved on the conversation, as the page does. The answer is
    saved whatever happens to the request: a client that goes away stops following it, not
    generating it (stop it with `.../stop`).
    """
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    after = None
    if data.parent_id is not None:
        after = await ownership.amessage_or_404(request.auth, data.parent_id, conversation_pk=conversation_id)
    files = await attachments.named_by(request.auth, data.files)
    data.apply_to(conversation)
    turn = await turns.start_turn(conversation, data.prompt, after=after, files=files)
    return await _answered(conversation, turn, data.stream)


async def _answered(conversation: Conversation, turn: turns.Turn, stream: bool) -> StreamingHttpResponse | TurnOut:
    if stream:
        response = sse.response(sse.turn_events(turn.answer))
        response["X-Conversation-Id"] = str(conversation.pk)
        response["X-Message-Id"] = str(turn.answer.pk)
        return response
    return TurnOut(
        conversation_id=conversation.pk,
        prompt=MessageOut.model_validate(turn.prompt),
        answer=MessageOut.model_validate(await delivery.ended(turn.answer)),
    )


@api.post(
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
    response={200: TurnOut, 409: ErrorOut, **STARTS_AN_ANSWER},
    openapi_extra=streamed("JSON, or with `stream: true` Server-Sent Events, as for a new prompt.", links=ANSWER_LINKS),
    tags=["messages"],
)
async def regenerate_answer(
    request: AuthenticatedRequest,
    data: RegenerateIn | None = None,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> StreamingHttpResponse | TurnOut:
    """A new answer to the prompt this answer answers, with the conversation's settings (those given
    here are saved on it first). The old answer is kept as another version; the new one is shown.

    409 for an answer that follows no prompt (one saved from an OpenAI request's history can).
    """
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    data = data or RegenerateIn()  # no body: the conversation's settings as they are, answered as JSON
    data.apply_to(conversation)
    try:
        turn = await turns.regenerate(conversation, answer)
    except turns.NoPrompt as exc:
        raise ApiError(409, str(exc)) from None
    return await _answered(conversation, turn, data.stream)


@api.post(
    "/conversations/{conversation_id}/messages/{message_id}/edit",
    response={200: TurnOut, **STARTS_AN_ANSWER},
    openapi_extra=streamed("JSON, or with `stream: true` Server-Sent Events, as for a new prompt.", links=ANSWER_LINKS),
    tags=["messages"],
)
async def edit_prompt(
    request: AuthenticatedRequest,
    data: EditIn,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> StreamingHttpResponse | TurnOut:
    """Send `prompt` in place of this prompt: a new branch from the same point, then shown, with its
    answer. The earlier branch is kept as another version of the prompt."""
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    edited = await ownership.amessage_or_404(
        request.auth, message_id, conversation_pk=conversation_id, role=Message.Role.USER
    )
    data.apply_to(conversation)
    return await _answered(conversation, await turns.edit_prompt(conversation, edited, data.prompt), data.stream)


@api.post(
    "/conversations/{conversation_id}/messages/{message_id}/show",
    response={200: ConversationDetail, **ERRORS},
    tags=["messages"],
)
async def show_message(
    request: AuthenticatedRequest,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> ConversationDetail:
    """Show the branch through this message (another version of a prompt or an answer): on the page,
    in this API, and for the next prompt, which follows the newest message below it."""
    conversation = await ownership.aconversation_or_404(request.auth, conversation_id)
    await branches.show(await ownership.amessage_or_404(request.auth, message_id, conversation_pk=conversation_id))
    await conversation.arefresh_from_db()
    return _detail(conversation, await branches.ashown_branch(conversation), None)


@api.get(
    "/conversations/{conversation_id}/messages/{message_id}/stream",
    response={200: None, **ERRORS},
    openapi_extra=streamed("Server-Sent Events: the text so far, then each new delta, then `done` or `error`."),
    tags=["messages"],
)
async def follow_message(
    request: AuthenticatedRequest,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> StreamingHttpResponse:
    """Follow an answer, from its text so far (or from where `Last-Event-ID` says the client left
    off); an answer that has ended streams whole, then `done`."""
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    return sse.response(sse.turn_events(answer, since=sse.resumed_from(request)))


@api.post(
    "/conversations/{conversation_id}/messages/{message_id}/stop",
    response={200: MessageOut, 202: MessageOut, **ERRORS},
    tags=["messages"],
)
async def stop_message(
    request: AuthenticatedRequest,
    conversation_id: int = path_id(),
    message_id: int = path_id(),
) -> tuple[int, Message]:
    """Stop an answer being generated; its text so far is kept, in status `stopped`. 202, with the
    answer still `streaming`, if the stop is recorded but the worker generating it could not be
    reached: it stops within seconds (follow the answer to see it end)."""
    answer = await ownership.aanswer_or_404(request.auth, message_id, conversation_pk=conversation_id)
    stopped = await turns.stop_turn(answer)
    return (202 if stopped.is_streaming else 200), stopped


api.add_router("", workflows.router)
api.add_router("", history.router)  # search, export and import
api.add_router("", shelves.router)  # folders
api.add_router("", api_presets.router)
api.add_router("", feedback.router)  # thumbs and comments on answers
api.add_router("", files.router)  # files brought to prompts
api.add_exception_handler(MultiPartParserError, history.malformed_upload)
