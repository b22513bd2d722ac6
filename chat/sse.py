"""A chat turn as Server-Sent Events: `delta` (text), then `done` or `error`.

The page and the REST API both stream a turn through here, so a client sees the same events
whichever door it came in by. The other doors' streams (model-compose's sse-text, OpenAI's chunks)
have their own events but are framed by `frame` here too.

Each event's `id:` is how many characters of the answer the client has once it has that event. A
client that reconnects sends it back as `Last-Event-ID` (EventSource does so by itself) and gets
the answer from there on, with nothing missed and nothing twice, whichever worker it reaches.
"""

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse

from chat import turns
from chat.models import Message
from chat.turns import TurnDelta
from engine.vllm_client import TextDelta

LINE_BREAK = re.compile(r"\r\n|\r|\n")


# Frames are bytes: given text, Django's StreamingHttpResponse would encode each one itself,
# looking the charset up in the Content-Type header again for every frame, so for every token.


def frame(data: str, name: str | None = None, id: int | None = None) -> bytes:
    """One server-sent event: a `data:` line per line of `data`, as the SSE spec wants them."""
    head = (f"event: {name}\n" if name else "") + (f"id: {id}\n" if id is not None else "")
    if "\n" not in data and "\r" not in data:  # a token's JSON, say: one line, and no regex to find that out
        return f"{head}data: {data}\n\n".encode()
    return (head + "".join(f"data: {line}\n" for line in LINE_BREAK.split(data)) + "\n").encode()


def event(name: str, data: dict[str, Any], id: int | None = None) -> bytes:
    # JSON keeps a delta's line breaks inside one `data:` line.
    return frame(json.dumps(data, ensure_ascii=False), name, id)


def delta(text: str, id: int | None = None) -> bytes:
    """`event("delta", {"text": text}, id)`, built for every token: only the text is JSON-encoded."""
    head = "event: delta\n" if id is None else f"event: delta\nid: {id}\n"
    return f'{head}data: {{"text": {json.dumps(text, ensure_ascii=False)}}}\n\n'.encode()


def resumed_from(request: HttpRequest) -> int:
    """Where a reconnecting client left off (its Last-Event-ID), or 0; anything else is ignored."""
    last = request.headers.get("Last-Event-ID", "").strip()
    return int(last) if last.isascii() and last.isdigit() and len(last) <= 18 else 0


def ended(answer: Message) -> bytes:
    """The closing event for an answer in its final state."""
    if answer.has_failed:
        data = {"message_id": answer.pk, "status": answer.status, "message": answer.error}
        return event("error", data, id=len(answer.content))
    return event(
        "done",
        {
            "message_id": answer.pk,
            "status": answer.status,
            "finish_reason": answer.finish_reason,
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            "timings": {"time_to_first_token": answer.time_to_first_token, "duration": answer.duration},
        },
        id=len(answer.content),
    )


async def turn_events(answer: Message, since: int = 0) -> AsyncGenerator[bytes]:
    """The answer's events from character `since` on (see `resumed_from`)."""
    # Closed as soon as this is: the response closes only this generator when the client leaves.
    async with aclosing(turns.follow(answer, since)) as turn_events:
        async for turn_event in turn_events:
            if isinstance(turn_event, TurnDelta):
                yield delta(turn_event.text, id=turn_event.offset + len(turn_event.text))
            elif isinstance(turn_event, TextDelta):
                yield delta(turn_event.text)
            else:
                yield ended(turn_event.message)


def response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    # An async iterator: under ASGI a sync one would be buffered whole before the first byte.
    streaming = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    streaming["Cache-Control"] = "no-cache"
    streaming["X-Accel-Buffering"] = "no"  # keep nginx and friends from holding deltas back
    return streaming
