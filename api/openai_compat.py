"""An OpenAI-compatible endpoint under /v1/, so any OpenAI SDK can use the site as its base URL.

`POST /v1/chat/completions` (streaming or not) runs one chat turn, like the page: the request's
messages become a new conversation of the caller's (system and developer messages its system
prompt, the others its earlier messages, the last user message the prompt), so persistence,
context fitting and streaming all come from chat/turns.py, and the exchange is in the caller's
history. A client sends its whole history on every call: a request that repeats an earlier
request of the caller's (same model, same system prompt, same messages) and the answer it got
continues that conversation instead (`_start_in_session`), so one SDK session is one
conversation, titled by its first words: the model is not asked to name it, so that a call costs
the engine one request, as it would without the site. `GET /v1/models` lists every model the
engines serve now (engine/catalog.py), and a request goes to an engine serving its `model`.
Authentication is an API token as `Authorization: Bearer`, as for the REST API.

Errors come back in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`:
400 for a request that is not valid (bad JSON, wrong types, out-of-range settings, no prompt, a
prompt that cannot fit the context with room for max_tokens: `context_length_exceeded`),
401 without a valid token, 404 (`model_not_found`) for a model no engine serves now, 413 for a body
over API_MAX_BODY_BYTES, 429 (`rate_limit_exceeded`, with `Retry-After`) over the caller's limits on
answers, and for an
answer that failed before any text 503 if vLLM is down or 502 if vLLM failed or refused (the
message says which). A stream that fails later ends with an error frame, then `[DONE]`, as
vLLM's does. A client that goes away stops the answer, which closes the request to vLLM, as vLLM
itself aborts a request whose client left.
"""

import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, StreamingHttpResponse
from ninja import NinjaAPI, Schema
from pydantic import BaseModel, ConfigDict, Field

from api import delivery, openai_files
from api.auth import AuthenticatedRequest, TokenAuth
from api.errors import OPENAI, ApiError, handle_errors
from api.models import Continuation
from api.openai_files import FilePart
from api.schemas import GenerationSettings, MaxTokens, ModelName
from chat import rules, sse, turns
from chat.context import ContextTooLong, check_prompt_fits
from chat.file_context import with_files
from chat.models import Attachment, Conversation, Message
from chat.turns import TurnEnded, TurnEvent
from engine import catalog, vllm_client
from engine.vllm_client import ServedModel, TextDelta

openai_api = NinjaAPI(
    title="OpenAI-compatible API",
    version="1",
    urls_namespace="openai",
    docs_url=None,
    openapi_url=None,
    auth=TokenAuth(),
)

handle_errors(openai_api, OPENAI)

STARTED = int(time.time())


# --- The request ------------------------------------------------------------------------------
# Unknown fields are ignored, as SDKs send many (seed, user, stop, ...) that this site does not use.


class ContentPart(Schema):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None
    file: FilePart | None = None  # a `file` part's (api/openai_files.py)


class ChatMessage(Schema):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        kinds = ("text", "file") if self.role == "user" else ("text",)
        if any(part.type not in kinds or (part.type == "file" and part.file is None) for part in self.content):
            raise ApiError(
                400, "Only text content and a user's files are supported.", param=f"messages.{index}.content"
            )
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def files(self) -> list[FilePart]:
        if self.content is None or isinstance(self.content, str):
            return []
        return [part.file for part in self.content if part.type == "file" and part.file is not None]


class StreamOptions(BaseModel):
    # pydantic's own model, not ninja's Schema: a Schema reads any value's attributes, so it would
    # take "x" as options with every field at its default.
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionIn(GenerationSettings):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


def _checked(text: str, rule: Callable[[str], str], param: str) -> str:
    try:
        return rule(text)
    except ValidationError as exc:
        raise ApiError(400, exc.messages[0], param=param, code="invalid_value") from None


class Exchange:
    """The request as a conversation: its system prompt, earlier messages, and the prompt."""

    def __init__(self, request: ChatCompletionIn) -> None:
        if request.n not in (None, 1):
            raise ApiError(400, "Only one choice (n=1) is supported.", param="n", code="invalid_value")
        system: list[str] = []
        chat: list[tuple[str, str]] = []
        self.file_parts: list[list[FilePart]] = []  # each of `chat`'s
        for index, message in enumerate(request.messages):
            text = _checked(message.text(index), rules.storable, f"messages.{index}.content")
            if message.role in ("system", "developer"):
                system.append(text)
            else:
                chat.append((message.role, text))
                self.file_parts.append(message.files())
        if not chat or chat[-1][0] != "user":
            raise ApiError(400, "The last message must be the user's: it is the prompt.", param="messages")
        self.system_prompt = _checked("\n\n".join(system), rules.clean_system_prompt, "messages")
        self.chat = chat
        self.earlier = [(role, text) for role, text in chat[:-1] if text]
        self.prompt = _checked(chat[-1][1], rules.clean_prompt, f"messages.{len(request.messages) - 1}.content")
        # As the client sent them, which its next request repeats: the prompt before it was cleaned.
        self.sent = [*self.earlier, chat[-1]]
        self.files: list[Attachment] = []
        self.taken_in: list[Attachment] = []  # those of `files` the request brought (file_data)
        self.settings = request
        if request.max_completion_tokens is not None:
            self.settings = request.model_copy(update={"max_tokens": request.max_completion_tokens})

    def read_files(self, user: User) -> None:
        """Take in the prompt's files, and put an earlier message's into its text (api/openai_files.py)."""
        if not any(self.file_parts):
            return
        try:
            self.files = openai_files.prompt_files(user, self.file_parts[-1], self.taken_in)
            earlier = [
                (role, with_files(text, openai_files.earlier_files(user, parts)))
                for (role, text), parts in zip(self.chat[:-1], self.file_parts[:-1], strict=True)
            ]
        except BaseException:
            openai_files.forget(self.taken_in)
            raise
        self.earlier = [(role, text) for role, text in earlier if text]

    def conversation(self, user: User) -> Conversation:
        conversation = Conversation(owner=user, system_prompt=self.system_prompt)
        self.settings.apply_to(conversation)
        return conversation


# --- The routes ---------------------------------------------------------------------------------


@openai_api.post("/chat/completions")
async def chat_completions(
    request: AuthenticatedRequest, data: ChatCompletionIn
) -> StreamingHttpResponse | dict[str, Any]:
    exchange = Exchange(data)
    await sync_to_async(exchange.read_files)(request.auth)
    try:
        answer = await _start_in_session(request.auth, data.model, exchange)
    except BaseException:  # refused, or the client gone: a file it brought is kept with no prompt
        await sync_to_async(openai_files.forget)(exchange.taken_in)
        raise
    if not data.stream:
        return _completion(await delivery.whole(answer))
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    return await delivery.stream(answer, partial(_chunks, answer, include_usage=include_usage))


# --- One SDK session, one conversation ----------------------------------------------------------
# Each answer is recorded (api/models.py: Continuation) under a digest of the request it answered.
# A later request's prefixes that end just before one of its answers are digested the same way, and
# looked up at once by the index: nothing scans the caller's conversations.

# How many of a request's answers, from its last, may be the one it continues: a client adds a few
# messages between calls, not hundreds.
ANSWERS_LOOKED_AT = 32


@dataclass(frozen=True, slots=True)
class Session:
    """Where a request goes in its caller's history: after `after`, an answer it repeats (whose
    conversation it continues, with the messages the request adds before its prompt), or None (a
    new conversation). `digest` records the request's own answer for its next call."""

    digest: str
    after: Message | None = None
    after_digest: str = ""  # `after`'s record, to give back if this request's turn does not start
    added: Sequence[tuple[str, str]] = ()


def _digests(owner: User, model: str, exchange: Exchange) -> dict[int, str]:
    """SHA-256 of the request's first k messages (with its owner, model and system prompt), for
    each k at which one of its last ANSWERS_LOOKED_AT answers sits, and for all of them."""
    head = json.dumps([owner.pk, model, exchange.system_prompt], ensure_ascii=False)
    running = hashlib.sha256(head.encode())
    answers = [k for k, (role, _) in enumerate(exchange.sent) if role == "assistant"][-ANSWERS_LOOKED_AT:]
    wanted, digests = set(answers), {}
    for k, message in enumerate(exchange.sent):
        if k in wanted:
            digests[k] = running.hexdigest()
        running.update(json.dumps(message, ensure_ascii=False).encode())
    digests[len(exchange.sent)] = running.hexdigest()
    return digests


def _session(owner: User, model: str, exchange: Exchange) -> Session:
    """The request's Session: the answer it continues is claimed (its record deleted), so that two
    requests repeating the same answer at once do not both continue it."""
    digests = _digests(owner, model, exchange)
    mine = digests.pop(len(exchange.sent))
    at = {digest: k for k, digest in digests.items()}
    # Only the caller's own answers: a digest could never match another person's, and is not trusted to.
    records = Continuation.objects.filter(digest__in=at, answer__conversation__owner=owner).select_related(
        "answer__conversation"
    )
    for record in sorted(records, key=lambda record: at[record.digest], reverse=True):
        answer, k = record.answer, at[record.digest]
        repeated = answer.content == exchange.sent[k][1] and not answer.is_streaming
        # The conversation's shown branch must still end there: one continued elsewhere since (the
        # page, the REST API) is no longer this history.
        claimed = repeated and answer.conversation.branch_tip_id == answer.pk
        if claimed and Continuation.objects.filter(pk=record.pk).delete()[0]:
            return Session(mine, answer, record.digest, exchange.sent[k + 1 : -1])
    return Session(mine)


def _record(answer: Message, digest: str) -> None:
    # A deleted answer (its conversation deleted meanwhile) has nothing to continue.
    try:
        Continuation.objects.create(answer=answer, digest=digest)
    except IntegrityError:
        pass


async def _start_in_session(owner: User, model: str, exchange: Exchange) -> Message:
    """Start the request's turn, continuing the conversation of the answer it repeats, if any, else
    in a new conversation; the new answer is recorded for the next call. Raises ApiError 400
    (context_length_exceeded), and whatever turns.start_turn raises, having saved nothing."""
    session = await sync_to_async(_session)(owner, model, exchange)
    if session.after is None:
        conversation = exchange.conversation(owner)
    else:
        conversation = session.after.conversation
        exchange.settings.apply_to(conversation)
    try:
        try:
            # Routed by `model` (engine/catalog.py): one no engine serves now is a 404, model_not_found.
            # The default model is never refused: while its engine is down, the answer fails as
            # "vLLM is down" (503).
            await check_prompt_fits(
                system_prompt=conversation.system_prompt,
                prompt=exchange.prompt,
                max_tokens=conversation.max_tokens,
                model=model,
            )
        except ContextTooLong as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
        # The earlier messages are saved with the prompt, in one transaction: a refused turn saves none.
        earlier = exchange.earlier if session.after is None else session.added
        # Named by its first words, not by the model: a proxy that asked the engine twice for each
        # one-shot call would double what an API client costs it (bench/README.md, `vllm bench serve`).
        _, answer = await turns.start_turn(
            conversation,
            exchange.prompt,
            after=session.after,
            earlier=earlier,
            files=exchange.files,
            named_by_model=False,
        )
    except BaseException:  # a refusal, or the client gone meanwhile (CancelledError)
        if session.after is not None:  # the client may send the same history again
            await sync_to_async(_record)(session.after, session.after_digest)
        raise
    await sync_to_async(_record)(answer, session.digest)
    return answer


def _finish_reason(answer: Message) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Message) -> dict[str, int]:
    prompt, completion = answer.prompt_tokens or 0, answer.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _head(answer: Message, kind: str) -> dict[str, Any]:
    # The id names the stored answer: it is message {pk} in the caller's history.
    created = int(answer.created_at.timestamp())
    return {"id": f"chatcmpl-{answer.pk}", "object": kind, "created": created, "model": answer.model_name}


def _completion(answer: Message) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer.content}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(answer)}
    return {**_head(answer, "chat.completion"), "choices": [choice], "usage": _usage(answer)}


def _data(payload: Any) -> bytes:
    return sse.frame(json.dumps(payload, ensure_ascii=False))


async def _chunks(answer: Message, events: AsyncIterator[TurnEvent], *, include_usage: bool) -> AsyncGenerator[bytes]:
    head = _head(answer, "chat.completion.chunk")
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**head, "choices": [choice], **extra})

    # A token's chunk differs from the next only in its text: the rest is encoded once, around a
    # placeholder (NUL, which JSON writes as \u0000 and no later field holds), and only the text per token.
    before, _, after = chunk({"content": "\0"}).decode().rpartition('"\\u0000"')

    def token(text: str) -> bytes:
        return f"{before}{json.dumps(text, ensure_ascii=False)}{after}".encode()

    yield chunk({"role": "assistant", "content": ""})
    async for event in events:
        if isinstance(event, TextDelta):
            yield token(event.text)
        elif isinstance(event, TurnEnded):
            message = event.message
            if message.has_failed:
                error = {"message": message.error, "type": "server_error", "param": None, "code": "upstream_error"}
                yield _data({"error": error})
            else:
                yield chunk({}, _finish_reason(message))
                if include_usage:
                    yield _data({**head, "choices": [], "usage": _usage(message)})
    yield sse.frame("[DONE]")


def _model_card(served: ServedModel) -> dict[str, Any]:
    # A model an engine serves now, as the engine names it; the context is the one the site fits to.
    return {
        "id": served.id,
        "object": "model",
        "created": STARTED,
        "owned_by": "vllm",
        "max_model_len": served.context_length,
    }


async def _usable() -> list[ServedModel]:
    """Every model a person may ask for now: those an engine that is up serves, the default one first
    (even while its engine is down, as it is never refused)."""
    default = await vllm_client.served_model()
    usable = [offer.model for offer in await catalog.offered() if offer.available]
    if default.id and all(model.id != default.id for model in usable):
        usable.insert(0, default)
    return usable


@openai_api.get("/models")
async def list_models(request: HttpRequest) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(served) for served in await _usable()]}


@openai_api.get("/models/{path:model}")
async def retrieve_model(request: HttpRequest, model: str) -> dict[str, Any]:
    served = next((served for served in await _usable() if served.id == model), None)
    if served is None:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    return _model_card(served)
