"""A temporary chat: a conversation the site does not save.

The page keeps the conversation (templates/chat/temporary.html, temporary.js) and sends it whole
with each prompt; the site streams the answer from the engine straight back and keeps nothing: no
Conversation or Message row, so nothing in the list, in search or in an export, and nothing left
once the page is closed. This is not chat/turns.py's turn, which exists to store an answer while it
is written and to let another tab or worker follow it: here there is one follower, the request
itself, and an answer that outlives it would have nowhere to go. Closing the request closes the
engine's stream (vLLM then frees the slot).

The answer streams in the chat page's Server-Sent Events (chat/sse.py): `delta`, then `done` or
`error`, with no `id:` (there is nothing stored to resume from). It counts against the person's
limits (chat/limits.py) with their stored answers; having no row, it is counted here, per worker
process: a person with several workers' worth of temporary answers at once could start a few more
than the limit, which stays bounded by the number of workers.
"""

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext

from chat import limits, rules, sse
from chat.context import ContextTooLong, fit_context
from chatsite.request_threads import give_back_connection
from engine import catalog
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage

# The most earlier messages a temporary chat sends; the context fitting drops the oldest anyway.
MAX_HISTORY_MESSAGES = 200

# This process's temporary answers, by person: how many stream now, and when each began (counted
# by chat/limits.py with the stored ones, for a stored answer's start too).
_streaming = limits.rowless_streaming
_started = limits.rowless_started


def clean_history(text: str) -> list[dict[str, str]]:
    """The earlier messages the page sends (JSON: [{"role", "content"}, …], a prompt first, then
    answer and prompt in turn), checked as a stored conversation's would be on its way in."""
    if not text:
        return []
    try:
        history = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ValidationError(gettext("The earlier messages are not valid JSON."), code="history") from None
    if not isinstance(history, list) or len(history) > MAX_HISTORY_MESSAGES:
        raise ValidationError(
            gettext("The earlier messages must be a list of at most %(count)s messages.")
            % {"count": MAX_HISTORY_MESSAGES},
            code="history",
        )
    cleaned = []
    for place, message in enumerate(history):
        role = "user" if place % 2 == 0 else "assistant"
        if not (isinstance(message, dict) and message.get("role") == role and isinstance(message.get("content"), str)):
            raise ValidationError(
                gettext("Each earlier message must be a prompt or an answer, in turn, with its text."),
                code="history",
            )
        content = message["content"]
        if len(content) > settings.CHAT_MAX_PROMPT_CHARS * 4:
            raise ValidationError(gettext("An earlier message is too long."), code="history")
        cleaned.append({"role": role, "content": rules.storable(content)})
    return cleaned


class Reserved:
    """Room for one temporary answer of a person's, held until `release` (which may be called again)."""

    def __init__(self, owner_pk: int) -> None:
        self.owner_pk = owner_pk
        self.held = True
        self.started_at = timezone.now()
        _streaming[owner_pk] += 1
        _started[owner_pk].append(self.started_at)

    def release(self) -> None:
        if self.held:
            self.held = False
            _streaming[self.owner_pk] -= 1
            if not _streaming[self.owner_pk]:
                del _streaming[self.owner_pk]


def _check_room(reserved: Reserved) -> None:
    started = _started[reserved.owner_pk]
    while started and started[0] < timezone.now() - limits.MINUTE:
        started.popleft()
    # The others': this one is registered already (reserved before any await, so that two
    # requests together each see the other), and left out of its own count.
    with transaction.atomic():
        limits.check_room_for_an_answer(reserved.owner_pk, rowless=reserved.started_at)


async def reserve(owner_pk: int) -> Reserved:
    """Room for a temporary answer, or TooManyAnswers (nothing held then)."""
    reserved = Reserved(owner_pk)
    try:
        await sync_to_async(_check_room)(reserved)
    except BaseException:
        reserved.release()
        _started[owner_pk].remove(reserved.started_at)  # refused: not an answer started
        raise
    return reserved


async def answer(
    *,
    history: list[dict[str, str]],
    prompt: str,
    system_prompt: str,
    options: GenerationOptions,
    chosen: catalog.Chosen,
    reserved: Reserved,
) -> AsyncGenerator[bytes]:
    """The answer's events, streamed from the engine; nothing is stored. The room is given back at the end."""
    try:
        # The stream may last minutes and reads nothing from the database: the connection its
        # request used (the session's, the user's, the room's count; with PostgreSQL, one of the
        # pool's few) goes back now, not when the stream ends, as a turn's follower's does.
        await give_back_connection()
        try:
            context = await fit_context(
                system_prompt=system_prompt,
                earlier=history,
                prompt=prompt,
                max_tokens=options.max_tokens,
                context_length=chosen.model.context_length,
                model=chosen.model.id,
                endpoint=chosen.endpoint,
            )
        except ContextTooLong as exc:
            yield sse.event("error", {"status": "error", "message": str(exc)})
            return
        finish_reason, failure = "", ""
        usage: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None}
        async with aclosing(catalog.stream_chat(context.messages, options, chosen)) as events:
            async for event in events:
                match event:
                    case TextDelta(text=text):
                        yield sse.delta(text)
                    case Finished(reason=reason):
                        finish_reason = reason
                    case Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens):
                        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
                    case Failed(message=message):
                        failure = message
        if failure:
            yield sse.event("error", {"status": "error", "message": failure})
        else:
            yield sse.event("done", {"status": "complete", "finish_reason": finish_reason, "usage": usage})
    finally:
        reserved.release()


class Stream:
    """The answer's events for Django's StreamingHttpResponse, which calls `close` once it is
    done with the response: the room is given back even if the stream never started (a client
    gone before the first byte). The events' own end gives it back too."""

    def __init__(self, events: AsyncGenerator[bytes], reserved: Reserved) -> None:
        self.events, self.reserved = events, reserved

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> bytes:
        return await anext(self.events)

    def close(self) -> None:
        self.reserved.release()
