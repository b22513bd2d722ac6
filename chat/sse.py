"""A chat turn as Server-Sent Events: `delta` (text), then `done` or `error`.

The page and the REST API both stream a turn through here, so a client sees the same events
whichever door it came in by. The other doors' streams (model-compose's sse-text, OpenAI's chunks)
have their own events but are framed by `frame` here too.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse

from chat import turns
from chat.models import Message
from engine.vllm_client import TextDelta

LINE_BREAK = re.compile(r"\r\n|\r|\n")


def frame(data: str, name: str | None = None) -> str:
    """One server-sent event: a `data:` line per line of `data`, as the SSE spec wants them."""
    head = f"event: {name}\n" if name else ""
    return head + "".join(f"data: {line}\n" for line in LINE_BREAK.split(data)) + "\n"


def event(name: str, data: dict[str, Any]) -> str:
    # JSON keeps a delta's line breaks inside one `data:` line.
    return frame(json.dumps(data, ensure_ascii=False), name)


def ended(answer: Message) -> str:
    """The closing event for an answer in its final state."""
    if answer.has_failed:
        return event("error", {"message_id": answer.pk, "status": answer.status, "message": answer.error})
    return event(
        "done",
        {
            "message_id": answer.pk,
            "status": answer.status,
            "finish_reason": answer.finish_reason,
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            "timings": {"time_to_first_token": answer.time_to_first_token, "duration": answer.duration},
        },
    )


async def turn_events(answer: Message) -> AsyncIterator[str]:
    async for turn_event in turns.follow(answer):
        if isinstance(turn_event, TextDelta):
            yield event("delta", {"text": turn_event.text})
        else:
            yield ended(turn_event.message)


def response(events: AsyncIterator[str]) -> StreamingHttpResponse:
    # An async iterator: under ASGI a sync one would be buffered whole before the first byte.
    streaming = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    streaming["Cache-Control"] = "no-cache"
    streaming["X-Accel-Buffering"] = "no"  # keep nginx and friends from holding deltas back
    return streaming
