"""Handing a turn's answer to an API client, which must learn the HTTP status before the stream.

The page always answers 200 and lets the stream say what happened. An API client also wants the
status to tell: so a door waits for the answer's first event, and an answer that failed before any
text (vLLM down, a refused request) becomes an error response instead of an empty stream.

Two ways to hand it over:
- `ended`: the REST API's. A client that goes away stops following the answer, not generating it;
  it can stop it with `.../stop`.
- `whole` and `stream`: the model-compose and OpenAI doors'. Their clients have no other way to stop
  an answer, so a client that goes away stops it, which closes the request to vLLM and frees its
  slot, as model-compose and vLLM themselves do.
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from django.http import StreamingHttpResponse

from api.errors import ApiError
from chat import sse, turns
from chat.models import Message
from chat.turns import TurnEnded, TurnEvent
from engine import vllm_client

# A door's events as its stream's frames (chat/sse.py's `frame`, bytes each).
Frames = Callable[[AsyncIterator[TurnEvent]], AsyncGenerator[bytes]]


async def ended(answer: Message) -> Message:
    """The answer as stored once its turn has ended."""
    async with aclosing(turns.follow(answer)) as events:
        async for event in events:
            if isinstance(event, TurnEnded):
                return event.message
    raise AssertionError("a turn's events end with TurnEnded")


async def whole(answer: Message) -> Message:
    """The answer once complete (or stopped), for a client that may go away while it waits.

    Raises ApiError (503 if vLLM is down, else 502) for an answer that failed, even with some text:
    a whole answer cannot say that it is not whole.
    """
    try:
        answer = await ended(answer)
    except asyncio.CancelledError:
        # The client went away: stop the answer too. Shielded, as the cancelled request would
        # otherwise cancel the stop as well.
        await asyncio.shield(turns.stop_turn(answer))
        raise
    if answer.has_failed:
        raise await _failure(answer)
    return answer


async def stream(answer: Message, frames: Frames) -> StreamingHttpResponse:
    """The answer as a stream of the door's frames, for a client that may go away.

    Waits for the answer's first event: an answer that failed before any text raises ApiError (503
    if vLLM is down, else 502). A client that goes away, while this waits or before the stream has
    sent the turn's end, stops the answer. `frames` turns the events into the door's frames; it
    need not care whether the client stays.
    """
    events = turns.follow(answer)
    try:
        first = await anext(events)
    except asyncio.CancelledError:
        await events.aclose()
        await asyncio.shield(turns.stop_turn(answer))
        raise
    if isinstance(first, TurnEnded) and first.message.has_failed and not first.message.content:
        await events.aclose()
        raise await _failure(first.message)
    return sse.response(_until_the_end(answer, first, events, frames))


async def _until_the_end(
    answer: Message, first: TurnEvent, rest: AsyncGenerator[TurnEvent], frames: Frames
) -> AsyncIterator[bytes]:
    ended = False

    async def events() -> AsyncIterator[TurnEvent]:
        # Noted as the door receives it: a client that leaves while the door sends the turn's end
        # leaves an answer that has ended already.
        nonlocal ended
        ended = isinstance(first, TurnEnded)
        yield first
        async for event in rest:
            ended = isinstance(event, TurnEnded)
            yield event

    try:
        # Closed here, not left to the garbage collector: when the client goes away, the response
        # closes only this generator.
        async with aclosing(rest), aclosing(frames(events())) as door_frames:
            async for frame in door_frames:
                yield frame
    finally:
        if not ended:
            await asyncio.shield(turns.stop_turn(answer))


async def _failure(answer: Message) -> ApiError:
    # 503 when vLLM is down (the client may retry later), 502 when it is up but failed or refused.
    status = 502 if (await vllm_client.check_health()).ok else 503
    code = "service_unavailable" if status == 503 else "upstream_error"
    return ApiError(status, answer.error, type="server_error", code=code)
