"""chat.direct_follower: a follower whose client the turn writes to itself, from its own task.

A follower in this process is otherwise woken for each delta: the turn's task tells it, the
response's task wakes, steps through the follower's and Django's async generators, and calls the
server's ASGI `send`. When the request's `send` is known (`KnownSend` keeps it for the request's
code), the first follower of an answer generated here hands it to the turn instead: the turn's task
writes each delta's event as it appends it, and the response's task sleeps until the answer ends,
whose event it sends as before. The events and their ids are the same either way.

Order: whoever writes (the turn, or the follower draining before the end) holds `lock` and writes
everything that came since the last write before letting go, so the events go out in order, each
once, and what came while a write waited goes out as one event. A write that fails (the client has
gone and the server refuses a send) is not the turn's failure: it stops writing, and the follower,
whose task the server cancels as the client leaves, goes too.
"""

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

# An ASGI `send`, and how a delta is framed for the client: its text and the answer's length after it.
type Send = Callable[[dict[str, Any]], Awaitable[None]]
type Frame = Callable[[str, int], bytes]

_send: ContextVar[Send | None] = ContextVar("asgi_send", default=None)


def known_send() -> Send | None:
    """The ASGI `send` of the request this code serves, if `KnownSend` runs the site."""
    return _send.get()


class KnownSend:
    """An ASGI application that runs `application` with each HTTP request's `send` known to its code."""

    def __init__(self, application: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = _send.set(send if scope["type"] == "http" else None)
        try:
            await self.application(scope, receive, send)
        finally:
            _send.reset(token)


class DirectFollower:
    """What the turn needs to write to one follower's client: its parts (the turn's own list) and how
    far this follower has had them."""

    def __init__(self, parts: list[str], read: int, length: int, send: Send, frame: Frame) -> None:
        self.parts, self.read, self.length = parts, read, length
        self.send, self.frame = send, frame
        self.lock = asyncio.Lock()
        self.broken = False

    async def write_new(self) -> None:
        """Write everything appended since the last write: one event per write."""
        async with self.lock:
            while not self.broken and len(self.parts) > self.read:
                upto = len(self.parts)
                new = self.parts[self.read] if upto == self.read + 1 else "".join(self.parts[self.read : upto])
                self.read = upto
                self.length += len(new)
                body = self.frame(new, self.length)
                try:
                    await self.send({"type": "http.response.body", "body": body, "more_body": True})
                except Exception:
                    self.broken = True  # the client has gone: its task is cancelled, and the follower with it
