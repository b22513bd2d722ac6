import asyncio
import threading
import time
from importlib.metadata import version

import pytest
from asgiref.sync import sync_to_async
from django.core.checks import ERROR, run_checks
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.signals import connection_created
from packaging.version import Version

from chat.models import Conversation
from chatsite import request_threads
from chatsite.request_threads import RequestThreads
from tests.commands import ROOT
from tests.waiting import wait_for_async


class SyncWork:
    """An ASGI app whose requests run sync code (thread-sensitive, as Django's are) and note where."""

    def __init__(self) -> None:
        self.threads: list[tuple[int, int]] = []  # each request's two calls' threads
        self.hold: asyncio.Event | None = None
        self.held = 0  # requests waiting on `hold`, each between its two calls

    async def __call__(self, scope, receive, send):
        first = await sync_to_async(threading.get_ident)()
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        second = await sync_to_async(threading.get_ident)()
        self.threads.append((first, second))


async def request(app):
    await app({"type": "http"}, None, None)


async def test_a_request_reuses_the_thread_an_earlier_one_gave_back():
    work = SyncWork()
    app = RequestThreads(work)
    for _ in range(3):
        await request(app)
    # One thread for all three, each request's calls on it: none made anew.
    assert len({thread for calls in work.threads for thread in calls}) == 1
    assert work.threads[0][0] != threading.get_ident()


async def test_requests_at_the_same_time_never_share_a_thread():
    work = SyncWork()
    work.hold = asyncio.Event()
    app = RequestThreads(work)
    both = asyncio.gather(request(app), request(app))
    await wait_for_async(lambda: work.held == 2, what="both requests to be between their calls")
    work.hold.set()
    await both
    (a_first, a_second), (b_first, b_second) = work.threads
    assert a_first == a_second and b_first == b_second  # thread-sensitive: one thread per request
    assert a_first != b_first


async def test_past_the_idle_limit_a_thread_given_back_is_let_go():
    work = SyncWork()
    work.hold = asyncio.Event()
    app = RequestThreads(work, keep_idle=1)
    both = asyncio.gather(request(app), request(app))
    await wait_for_async(lambda: work.held == 2, what="both requests to be between their calls")
    work.hold.set()
    await both
    work.hold = None
    await request(app)
    await request(app)
    kept = {calls[0] for calls in work.threads[2:]}
    assert len(kept) == 1 and kept <= {calls[0] for calls in work.threads[:2]}


@pytest.mark.django_db(transaction=True)
async def test_sequential_requests_open_one_database_connection_not_one_each(settings):
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection.alias)

    async def reads(scope, receive, send):
        await Conversation.objects.acount()

    app = RequestThreads(reads)
    connection_created.connect(count)
    try:
        for _ in range(4):
            await request(app)
    finally:
        connection_created.disconnect(count)
    assert len(opened) <= 1


async def test_a_request_cancelled_midway_does_not_hand_its_busy_thread_to_the_next():
    # A client that leaves (or daphne giving up on a request) cancels it while its sync code still
    # runs; the next request must not queue behind that code on the same thread.
    busy = threading.Event()
    threads: list[int] = []

    async def slow(scope, receive, send):
        def work():
            threads.append(threading.get_ident())
            busy.set()
            time.sleep(0.5)

        await sync_to_async(work)()

    async def quick(scope, receive, send):
        threads.append(await sync_to_async(threading.get_ident)())

    app = RequestThreads(slow)
    cancelled = asyncio.ensure_future(request(app))
    await asyncio.to_thread(busy.wait, 5)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    app.application = quick
    await request(app)

    assert threads[1] != threads[0]
    # Once the first thread's work ends, it is given back.
    await wait_for_async(lambda: threads[0] in app_threads(app), what="the first thread to be given back")
    await request(app)
    assert threads[0] in app_threads(app)


def app_threads(app: RequestThreads) -> set[int | None]:
    return {ident for executor in app._idle for ident in (t.ident for t in executor._threads)}


# Django's whole check run reads the database's features (a JSONField's support on SQLite).
@pytest.mark.django_db
def test_the_installed_asgiref_passes_the_sites_system_check():
    assert [message for message in run_checks() if message.id == "chatsite.E001"] == []


@pytest.mark.django_db
def test_an_asgiref_whose_thread_context_takes_no_executor_is_refused_clearly(monkeypatch):
    class OldThreadSensitiveContext:  # asgiref 3.12's: no executor
        def __init__(self) -> None:
            pass

    monkeypatch.setattr(request_threads, "ThreadSensitiveContext", OldThreadSensitiveContext)

    # Django's own check run, as `manage.py check`, `up` and `runserver` make it.
    [error] = [message for message in run_checks() if message.id == "chatsite.E001"]
    assert error.level == ERROR
    assert f"asgiref {version('asgiref')} is installed, but the site needs asgiref 3.13.0 or later" in error.msg
    assert error.hint == "pip install -r requirements.txt"
    # daphne started by hand runs no checks: the site refuses to start, rather than fail each request.
    with pytest.raises(ImproperlyConfigured, match=r"needs asgiref 3\.13\.0 or later"):
        RequestThreads(SyncWork())


def test_the_pinned_asgiref_is_one_the_site_can_run_on():
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert Version(pins["asgiref"]) >= Version(request_threads.NEEDED_ASGIREF)
