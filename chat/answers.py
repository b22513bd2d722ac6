"""Waiting on a turn's answer from the API's doors, which must choose an HTTP status before streaming.

The page always answers 200 and lets the stream say what happened. An API client also wants the
status to tell: so a door waits for the answer's first event, and an answer that failed before any
text (vLLM down, a refused request) becomes an HTTP error instead of an empty stream.
"""

from collections.abc import AsyncIterator

from chat import turns, vllm
from chat.models import Message
from chat.turns import TurnEnded, TurnEvent

FAILED = (Message.Status.ERROR, Message.Status.INTERRUPTED)


async def ended(answer: Message) -> Message:
    """The answer as stored once its turn has ended."""
    async for event in turns.follow(answer):
        if isinstance(event, TurnEnded):
            return event.message
    raise AssertionError("a turn's events end with TurnEnded")


async def opening(answer: Message) -> tuple[TurnEvent, AsyncIterator[TurnEvent]]:
    """The answer's first event, and its events from the first one on."""
    events = turns.follow(answer)
    first = await anext(events)

    async def replay() -> AsyncIterator[TurnEvent]:
        yield first
        async for event in events:
            yield event

    return first, replay()


def failed_without_text(event: TurnEvent) -> Message | None:
    """The answer, if this first event says it failed before any text."""
    if isinstance(event, TurnEnded) and event.message.status in FAILED and not event.message.content:
        return event.message
    return None


async def failure_status() -> int:
    """503 when vLLM is down (the client may retry later), 502 when it is up but failed or refused."""
    return 502 if (await vllm.check_health()).ok else 503
