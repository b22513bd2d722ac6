"""Each request's thread for Django's sync code, taken from a pool rather than made anew.

Django runs the sync parts of an ASGI request (the session, the signed-in user, an API token's
lookup, a view's `sync_to_async` calls) on a thread of the request's own: asgiref's
ThreadSensitiveContext, by default a new thread for every request, which opens a new database
connection (with SQLite: open the file, register Django's SQL functions, read the schema), and, as
the request ends, one more new thread to join it. That was a fifth of the CPU of a turn started
through the API (bench/README.md). Here a request borrows a one-thread executor from a pool and
gives it back as it ends, so the thread, and the connection it keeps (CONN_MAX_AGE), serve the
next request. A thread still serves one request at a time, which is what thread-sensitive code
asks for.
"""

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.db import close_old_connections

# Django's ASGIHandler and asgiref's typed applications disagree on the scope's type: any will do.
type ASGIApplication = Callable[[Any, Any, Any], Awaitable[None]]

# Threads kept idle for the next requests. Requests that stream (an answer followed for minutes)
# hold theirs the whole time, as before: past this many, a thread given back is let go.
KEEP_IDLE = 128


class RequestThreads:
    """An ASGI application that runs `application` with each request's sync code on a pooled thread."""

    def __init__(self, application: ASGIApplication, keep_idle: int = KEEP_IDLE) -> None:
        self.application = application
        self.keep_idle = keep_idle
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        thread = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            # The outermost context decides: Django's own ThreadSensitiveContext inside it changes nothing.
            async with ThreadSensitiveContext(executor=thread):
                await self.application(scope, receive, send)
        except BaseException:
            # Cancelled or failed midway: its sync code may still be running there, and Django's
            # request_finished, which closes the connections a request's end closes, may never
            # come. The thread goes back once that code is done and those connections are closed,
            # so that the next request neither waits behind it nor finds a pooled connection held.
            loop = asyncio.get_running_loop()
            settled = thread.submit(close_old_connections)
            settled.add_done_callback(lambda _: self._give_back_from_the_thread(loop, thread))
            raise
        else:
            self._give_back(thread)

    def _give_back_from_the_thread(self, loop: asyncio.AbstractEventLoop, thread: ThreadPoolExecutor) -> None:
        with suppress(RuntimeError):  # the loop has closed: the site is stopping
            loop.call_soon_threadsafe(self._give_back, thread)

    def _give_back(self, thread: ThreadPoolExecutor) -> None:
        if len(self._idle) < self.keep_idle:
            self._idle.append(thread)
        else:
            thread.shutdown(wait=False)
