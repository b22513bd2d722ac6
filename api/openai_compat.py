"""An OpenAI-compatible endpoint under /v1/, so any OpenAI SDK can use the site as its base URL.

`POST /v1/chat/completions` (streaming or not) runs one chat turn, like the page: the request's
messages become a new conversation of the caller's (system and developer messages its system
prompt, the others its earlier messages, the last user message the prompt), so persistence,
context fitting and streaming all come from chat/turns.py, and the exchange is in the caller's
history. `GET /v1/models` lists the one served model. Authentication is an API token as
`Authorization: Bearer`, as for the REST API.

Errors come back in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`:
400 for a request that is not valid (bad JSON, wrong types, out-of-range settings, no prompt, a
prompt that cannot fit the context with room for max_tokens: `context_length_exceeded`),
401 without a valid token, 404 for another model, 413 for a body over API_MAX_BODY_BYTES, and
for an answer that failed before any text 503 if vLLM is down or 502 if vLLM failed or refused
(the message says which). A stream that fails later ends with an error frame, then `[DONE]`, as
vLLM's does. A client that goes away stops the answer, which closes the request to vLLM, as vLLM
itself aborts a request whose client left.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from pydantic import ConfigDict, Field
from pydantic_core import PydanticCustomError

from api import answers
from api.auth import TokenAuth
from api.schemas import GenerationSettings, MaxTokens, clean_prompt, clean_system_prompt
from chat import sse, turns
from chat.context import ContextTooLong
from chat.models import Conversation, Message
from chat.turns import TurnEnded, TurnEvent
from engine import vllm_client
from engine.vllm_client import ServedModel, TextDelta

openai_api = NinjaAPI(
    title="OpenAI-compatible API",
    version="1",
    urls_namespace="openai",
    docs_url=None,
    openapi_url=None,
    auth=TokenAuth(),
)

STARTED = int(time.time())


class OpenAIError(Exception):
    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JsonResponse:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JsonResponse({"error": error}, status=self.status)


@openai_api.exception_handler(OpenAIError)
def openai_error(request: HttpRequest, exc: OpenAIError) -> HttpResponse:
    return exc.response()


@openai_api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = (
        "Invalid or missing API key: send `Authorization: Bearer <token>` (python manage.py createtoken USERNAME)."
    )
    return OpenAIError(401, message, code="invalid_api_key").response()


@openai_api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        message = f"The request body is not valid JSON: {exc.__cause__}"
    return OpenAIError(exc.status_code, message).response()


@openai_api.exception_handler(ValidationError)
def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0]
    # ninja's loc is ["body", <parameter name>, field, ...].
    param = ".".join(str(part) for part in first["loc"][2:]) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return OpenAIError(400, message, param=param, code="invalid_value").response()


@openai_api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return OpenAIError(404, "Not found.").response()


# --- The request ------------------------------------------------------------------------------
# Unknown fields are ignored, as SDKs send many (seed, user, stop, ...) that this site does not use.


class ContentPart(Schema):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(Schema):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise OpenAIError(400, "Only text content is supported.", param=f"messages.{index}.content")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(Schema):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionIn(GenerationSettings):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


def _checked(text: str, check, param: str) -> str:
    try:
        return check(text)
    except PydanticCustomError as exc:
        raise OpenAIError(400, exc.message(), param=param, code="invalid_value") from None


class Exchange:
    """The request as a conversation: its system prompt, earlier messages, and the prompt."""

    def __init__(self, request: ChatCompletionIn, served: ServedModel) -> None:
        # While vLLM cannot say what it serves, the request goes on, to fail as "vLLM is down" (503).
        if served.live and request.model != served.id:
            raise OpenAIError(
                404,
                f"The model `{request.model}` does not exist. This site serves {served.id or 'no model now'}.",
                param="model",
                code="model_not_found",
            )
        if request.n not in (None, 1):
            raise OpenAIError(400, "Only one choice (n=1) is supported.", param="n", code="invalid_value")
        system: list[str] = []
        chat: list[tuple[str, str]] = []
        for index, message in enumerate(request.messages):
            text = message.text(index)
            if message.role in ("system", "developer"):
                system.append(text)
            else:
                chat.append((message.role, text))
        if not chat or chat[-1][0] != "user":
            raise OpenAIError(400, "The last message must be the user's: it is the prompt.", param="messages")
        self.system_prompt = _checked("\n\n".join(system), clean_system_prompt, "messages")
        self.earlier = [(role, text) for role, text in chat[:-1] if text]
        self.prompt = _checked(chat[-1][1], clean_prompt, f"messages.{len(request.messages) - 1}.content")
        self.settings = request
        if request.max_completion_tokens is not None:
            self.settings = request.model_copy(update={"max_tokens": request.max_completion_tokens})

    def conversation(self, user) -> Conversation:
        conversation = Conversation(owner=user, system_prompt=self.system_prompt)
        self.settings.apply_to(conversation)
        return conversation

    @sync_to_async
    def save(self, conversation: Conversation) -> None:
        with transaction.atomic():
            conversation.save()
            Message.objects.bulk_create(
                Message(conversation=conversation, role=role, content=text, status=Message.Status.COMPLETE)
                for role, text in self.earlier
            )


# --- The routes ---------------------------------------------------------------------------------


@openai_api.post("/chat/completions")
async def chat_completions(request: HttpRequest, data: ChatCompletionIn):
    exchange = Exchange(data, await vllm_client.served_model())
    conversation = exchange.conversation(request.auth)
    try:
        await answers.check_fits(
            system_prompt=conversation.system_prompt, prompt=exchange.prompt, max_tokens=conversation.max_tokens
        )
    except ContextTooLong as exc:
        raise OpenAIError(400, str(exc), param="messages", code="context_length_exceeded") from None
    await exchange.save(conversation)
    _, answer = await turns.start_turn(conversation, exchange.prompt)
    try:
        if data.stream:
            first, events = await answers.opening(answer)
        else:
            ended = await answers.ended(answer)
    except asyncio.CancelledError:
        # The client went away before the first byte of the answer.
        await asyncio.shield(turns.stop_turn(answer))
        raise
    if data.stream:
        if (failed := answers.failed_without_text(first)) is not None:
            raise await _upstream_error(failed)
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        return sse.response(_chunks(answer, events, include_usage=include_usage))
    if ended.status in answers.FAILED:
        raise await _upstream_error(ended)
    return _completion(ended)


async def _upstream_error(answer: Message) -> OpenAIError:
    status = await answers.failure_status()
    kind = "service_unavailable" if status == 503 else "upstream_error"
    return OpenAIError(status, answer.error, type="server_error", code=kind)


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


def _data(payload: Any) -> str:
    return sse.frame(json.dumps(payload, ensure_ascii=False))


async def _chunks(answer: Message, events: AsyncIterator[TurnEvent], *, include_usage: bool) -> AsyncIterator[str]:
    head = _head(answer, "chat.completion.chunk")
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**head, "choices": [choice], **extra})

    ended = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, TurnEnded):
                ended = True
                message = event.message
                if message.status in answers.FAILED:
                    error = {"message": message.error, "type": "server_error", "param": None, "code": "upstream_error"}
                    yield _data({"error": error})
                else:
                    yield chunk({}, _finish_reason(message))
                    if include_usage:
                        yield _data({**head, "choices": [], "usage": _usage(message)})
        yield sse.frame("[DONE]")
    finally:
        if not ended:
            # The client went away: stop the answer, which closes vLLM's request and frees its slot.
            await asyncio.shield(turns.stop_turn(answer))


def _model_card(served: ServedModel) -> dict[str, Any]:
    # The model vLLM serves now, as vLLM names it; the context is the one the site fits to.
    return {
        "id": served.id,
        "object": "model",
        "created": STARTED,
        "owned_by": "vllm",
        "max_model_len": served.context_length,
    }


@openai_api.get("/models")
async def list_models(request: HttpRequest):
    served = await vllm_client.served_model()
    return {"object": "list", "data": [_model_card(served)] if served.id else []}


@openai_api.get("/models/{path:model}")
async def retrieve_model(request: HttpRequest, model: str):
    served = await vllm_client.served_model()
    if not served.id or model != served.id:
        raise OpenAIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    return _model_card(served)
