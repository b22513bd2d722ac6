"""Who generates an answer, and until when: the database's word on which answers are alive.

The site may run as several worker processes (and `manage.py run` is one more). Each records on
the answers it generates its own name (`WORKER`) and a lease, renewed while it generates. An
answer whose lease has expired was left by a worker that died: whichever worker notices first
marks it interrupted, with one conditional UPDATE, so it happens exactly once and never to an
answer that is still alive. Nothing here is asked of another process, which may be dead.

Leases are written and judged on the database's clock (`Now()`), never a host's: two hosts whose
clocks differ, or an NTP step on one, must not take each other's live answers for dead.

These are plain (sync) functions: the turn calls them off the event loop, each on a thread with
a connection of its own (`off_the_loop`).
"""

import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import NamedTuple

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_noop

from chat.models import Message

log = logging.getLogger(__name__)

# Why an answer is "interrupted": the worker generating it ended (a shutdown, or a crash noticed
# once its lease expired) before it did.
# Stored in English, as every answer's error is; the page says it in the reader's language.
INTERRUPTED_TEXT = gettext_noop("The site stopped before this answer was finished.")


def _worker_name() -> str:
    # Also this process's channel on the Channels layer, so only a channel name's characters.
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"worker.{host}.{os.getpid()}.{secrets.token_hex(4)}"


# This process's name as the owner of the answers it generates.
WORKER = _worker_name()


def off_the_loop[**P, R](function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`function` as a coroutine that runs on a thread of the default pool, with its own database
    connection, closed after the call (handed back to the pool with PostgreSQL); with SQLite, on
    the one thread of `one_at_a_time`.

    What Channels' database_sync_to_async does, but not thread-sensitive: a turn runs in a context
    of its own, where a thread-sensitive call would queue on asgiref's one shared thread behind
    every other request's sync code.
    """
    pooled = database_sync_to_async(function, thread_sensitive=False)
    serial = database_sync_to_async(function, thread_sensitive=False, executor=_sqlite_thread)

    @functools.wraps(function)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return await (serial if one_at_a_time() else pooled)(*args, **kwargs)

    return call


# SQLite lets one writer in at a time, and a connection that finds the lock taken waits for it in
# SQLite's busy handler, sleeping 1, 2, 5, ... up to 100 ms between tries: under a burst of turns
# from many threads most of a turn's start went in those sleeps (bench/README.md), while the lock
# was free most of the time. The turns' reads and writes go one after the other on one thread,
# with one connection kept open, instead.
_sqlite_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")


def one_at_a_time() -> bool:
    """Whether the turns' database work runs on the one thread (SQLite) rather than on many."""
    return connections["default"].vendor == "sqlite"


# Leases are renewed on a thread of their own. On the shared pool a renewal would queue behind every
# turn's reads and writes, and under load come too late: a live answer would be taken for dead.
_lease_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leases")


def on_the_lease_thread[**P, R](function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`function` as `off_the_loop` makes it, but on the leases' own thread."""
    return database_sync_to_async(function, thread_sensitive=False, executor=_lease_thread)


def new_lease() -> ExpressionWrapper[CombinedExpression]:
    """A lease's end, for an INSERT or UPDATE: a lease's length from now on the database's clock."""
    return ExpressionWrapper(Now() + timedelta(seconds=settings.CHAT_LEASE_SECONDS), output_field=DateTimeField())


class Renewed(NamedTuple):
    lost: set[int]  # no longer this worker's (deleted, or marked interrupted by another worker)
    stop: set[int]  # asked to stop by another worker, through the database (`stop_requested_at`)


def renew(pks: Collection[int]) -> Renewed:
    """Renew this worker's lease on these answers; says which it no longer holds and which it has
    been asked to stop."""
    if not pks:
        return Renewed(set(), set())
    held = Message.objects.streaming().filter(pk__in=pks, worker=WORKER)
    renewed = held.update(lease_until=new_lease())
    lost = set() if renewed == len(pks) else set(pks) - set(held.values_list("pk", flat=True))
    return Renewed(lost, set(held.exclude(stop_requested_at=None).values_list("pk", flat=True)))


def interrupt_expired(pk: int | None = None) -> int:
    """Mark interrupted the answers (or answer `pk`) whose lease has expired; returns how many.

    The UPDATE's condition is the check: two workers that notice the same dead answer at once mark
    it once between them, and an answer whose owner renewed in time is left alone.
    """
    expired = Message.objects.lease_expired()
    if pk is not None:
        expired = expired.filter(pk=pk)
    marked = expired.update(status=Message.Status.INTERRUPTED, error=INTERRUPTED_TEXT, updated_at=timezone.now())
    if marked:
        # Rare, and worth an operator's attention: a worker died, or could not renew in time.
        log.warning("Marked %d answer(s) interrupted: their worker's lease expired%s", marked, f" ({pk})" if pk else "")
    return marked


def interrupt_orphan(pk: int) -> int:
    """Mark interrupted an answer this worker owns but no longer generates (its last write failed)."""
    return (
        Message.objects.streaming()
        .filter(pk=pk, worker=WORKER)
        .update(status=Message.Status.INTERRUPTED, error=INTERRUPTED_TEXT, updated_at=timezone.now())
    )
