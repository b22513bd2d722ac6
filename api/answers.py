"""Waiting on a turn's answer from the API's doors, which must choose an HTTP status before streaming.

The page always answers 200 and lets the stream say what happened. An API client also wants the
status to tell: so a door waits for the answer's first event, and an answer that failed before any
text (vLLM down, a refused request) becomes an HTTP error instead of an empty stream.
"""

from collections.abc import AsyncIterator

from chat import turns
from chat.context import fit_context
from chat.models import Message
from chat.turns import TurnEnded, TurnEvent
from engine import vllm_client

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
    return 502 if (await vllm_client.check_health()).ok else 503


async def check_fits(*, system_prompt: str, prompt: str, max_tokens: int) -> None:
    """Raise ContextTooLong now if no answer could ever be generated for this prompt.

    The turn would save it as a failed answer; a door that can refuse the request instead (a new
    conversation, whose only context is the prompt) calls this first. Earlier turns are left out:
    context fitting drops them all before it gives up.
    """
    await fit_context(
        system_prompt=system_prompt,
        earlier=[],
        prompt=prompt,
        max_tokens=max_tokens,
        context_length=(await vllm_client.served_model()).context_length,
    )
