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
import inspect
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from importlib.metadata import version
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections

# Django's ASGIHandler and asgiref's typed applications disagree on the scope's type: any will do.
type ASGIApplication = Callable[[Any, Any, Any], Awaitable[None]]

# Threads kept idle for the next requests. Requests that stream (an answer followed for minutes)
# hold theirs the whole time, as before: past this many, a thread given back is let go.
KEEP_IDLE = 128


# The first asgiref whose ThreadSensitiveContext takes an `executor` (requirements.txt pins it).
NEEDED_ASGIREF = "3.13.0"


def asgiref_problem() -> str | None:
    """Why the installed asgiref cannot run RequestThreads, or None: its ThreadSensitiveContext
    must take an `executor`, which older ones refuse with TypeError on every request."""
    if "executor" in inspect.signature(ThreadSensitiveContext).parameters:
        return None
    return (
        f"asgiref {version('asgiref')} is installed, but the site needs asgiref {NEEDED_ASGIREF} or later: "
        "chatsite/request_threads.py gives ThreadSensitiveContext an executor, which this version does not "
        "take, so every request would fail."
    )


def check_asgiref(
    *,
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """Django system check chatsite.E001: asgiref_problem(), said by `manage.py check`, `up` and `runserver`."""
    problem = asgiref_problem()
    if problem is None:
        return []
    return [checks.Error(problem, hint="pip install -r requirements.txt", id="chatsite.E001")]


class RequestThreads:
    """An ASGI application that runs `application` with each request's sync code on a pooled thread."""

    def __init__(self, application: ASGIApplication, keep_idle: int = KEEP_IDLE) -> None:
        # Said as the site starts (daphne run by hand skips the system checks), not at every request.
        if problem := asgiref_problem():
            raise ImproperlyConfigured(problem)
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


async def give_back_connection() -> None:
    """Give the database connection the caller's thread holds (a request's: the one its session,
    user or token took) back to PostgreSQL's pool now, before a wait, rather than at the request's end.

    A request that holds one while it waits for something that needs a connection of its own (the
    engine catalog reading the admin's engines, a stop reading and writing the answer on threads of
    its own, the naming of a conversation) holds one and asks for another: a burst of such
    requests holds every connection of the pool, each waiting for the others until psycopg gives
    up (DATABASE_POOL_TIMEOUT), and every request meanwhile is answered 503. A connection in a
    transaction is kept (the caller's block would lose it). SQLite's are kept for the thread's life
    (CONN_MAX_AGE None), so with SQLite this returns at once, with no hop to the thread.
    """
    # Not chat.leases.one_at_a_time(), though it asks `vendor == "sqlite"` too: that one is about
    # SQLite's one writer at a time (where the turns' writes run), this one about whether a held
    # connection keeps one from anyone else (Django lends SQLite's from no pool: each thread opens
    # its own). The two answers agree for the two databases the site runs on, each for its own reason.
    if connections["default"].vendor == "sqlite":
        return
    await sync_to_async(_give_back)()


def _give_back() -> None:
    # What the request's end does (close_old_connections), but never inside a transaction.
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
