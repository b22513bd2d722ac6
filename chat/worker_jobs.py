"""chat.worker_jobs: this process as a worker, its lease renewals and its mailbox, started once per event loop.

The site may run as several worker processes. The worker that starts a turn owns its answer: it
holds a lease on it in the database (chat/leases.py), renewed at each checkpoint and by the timer
here, and only an answer whose lease has expired is marked interrupted, by whichever worker
notices. Other workers reach the answers this one generates through its mailbox on the Channels
layer (chat/relay.py).
"""

import asyncio
import contextvars
import logging
from typing import Any

from asgiref.typing import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from django.conf import settings

from chat import attachments, leases, relay
from chat.running_turn import _running

log = logging.getLogger("chat.turns")  # one log for a whole turn, whichever module of it writes

_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_tasks: set[asyncio.Task[None]] = set()


def worker_started(application: ASGI3Application) -> ASGI3Application:
    """The ASGI application, starting this worker's own jobs (`_start_worker`) at its first call."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await _start_worker()
        await application(scope, receive, send)

    return app


async def _start_worker() -> None:
    """Start, once per event loop, what this worker does besides its turns: renewing its leases
    (and marking dead workers' answers interrupted), and answering other workers' requests."""
    global _worker_loop
    loop = asyncio.get_running_loop()
    if _worker_loop is loop:
        return
    _worker_loop = loop
    _worker_tasks.clear()
    for job in (_keep_leases(loop), relay.listen(_answer_request), _expire_unsent_files()):
        task = loop.create_task(job, context=contextvars.Context())
        task.add_done_callback(_worker_job_ended)
        _worker_tasks.add(task)


def _worker_job_ended(task: asyncio.Task[None]) -> None:
    # Held in _worker_tasks, a failed job would never be collected, so never reported: say it now.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("This worker's %s stopped", task.get_coro(), exc_info=exc)


async def _keep_leases(loop: asyncio.AbstractEventLoop) -> None:
    while True:
        await asyncio.sleep(settings.CHAT_LEASE_SECONDS / 3)
        try:
            # A turn writing its end is renewed too: a final write that waits out a lock longer than
            # a lease (tried again, chat/running_turn.py) would otherwise find its answer marked
            # interrupted by this very sweep, its lease expired meanwhile.
            mine = {pk: turn for pk, turn in list(_running.items()) if turn.loop is loop}
            renewed = await leases.on_the_lease_thread(leases.renew)(list(mine))
            for pk in renewed.lost:
                mine[pk].lose()
            for pk in renewed.stop:
                if mine[pk].finishing is None:  # one writing its end has nothing left to stop
                    mine[pk].request_stop()
            await leases.on_the_lease_thread(leases.interrupt_expired)()
        except Exception:
            # The database is away for now: try again next time, well within the lease.
            log.exception("Could not renew this worker's leases")


# How often a worker deletes the files left unsent too long. A sweep here, not at each upload: an
# upload would only clean its own person's files, and one who never uploads again would keep theirs
# forever. An expired file counts toward its person's total for at most this long more.
SWEEP_UNSENT_FILES_SECONDS = 600.0


async def _expire_unsent_files() -> None:
    while True:
        try:
            await leases.off_the_loop(attachments.delete_expired_unsent)()
        except Exception:
            log.exception("Could not delete the files left unsent")  # the database is away: next time
        await asyncio.sleep(SWEEP_UNSENT_FILES_SECONDS)


async def _answer_request(message: dict[str, Any]) -> None:
    """Another worker asks about an answer this one generates (chat/relay.py)."""
    try:
        match message:
            case {"type": "turn.follow", "answer": int(pk), "since": int(since), "reply_to": str(reply_to)}:
                running = _running.get(pk)
                if running is None or running.ended is not None:
                    await relay.send(reply_to, {"type": "turn.text", "offset": since, "text": "", "running": False})
                    return
                text = running.text()
                since = min(max(since, 0), len(text))
                running.publish_to_other_workers()
                reply = {"type": "turn.text", "offset": since, "text": text[since:], "running": True}
                await relay.send(reply_to, reply)
            case {"type": "turn.stop", "answer": int(pk), "reply_to": reply_to}:
                if (running := _running.get(pk)) is not None:
                    await running.stop()
                if reply_to:
                    await relay.send(reply_to, {"type": "turn.stopped"})
    except Exception:
        log.exception("Could not answer %s", message.get("type"))
