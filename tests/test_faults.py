"""Nothing lost when a part fails (issue 20): the site on real servers while Redis, PostgreSQL,
SQLite's lock or a host's clock misbehaves mid-answer, against the fake vLLM.

Each test counts, over the answers it started: those in flight when the fault came, those
completed, those that ended explained (stopped or deleted by their person, or ended in error or
interrupted with the reason stored), and the text lost: characters the model sent (the fake's
whole reply, for an answer that completed) or a client was shown that the database does not hold.
That must be 0. Each test adds its row to the table in test-artifacts/faults.md.
"""

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from chat import titles
from tests.accounts import PASSWORD
from tests.fake_vllm import Instructed
from tests.fixtures_servers import migrate_and_add_alice, workers_env
from tests.servers import PostgreSQL, Redis
from tests.site_server import SiteProcess, SiteWorkers, Worker
from tests.sse import sse_events
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TERMINAL = {"complete", "stopped", "error", "interrupted"}
NAMED = "Named by the model"


# --- the site's doors, as a client sees them -----------------------------------------------------


@contextmanager
def api(url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{url}/api", headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        yield client


def start_turn(url: str, token: str, prompt: str = "Go", title: str = "Fault") -> tuple[int, int]:
    """(conversation id, answer id) of a turn started at `url`, whose client leaves after the first
    delta (the answer goes on without it)."""
    with api(url, token) as client:
        conversation = client.post("/conversations", json={"title": title}).json()["id"]
        path = f"/conversations/{conversation}/messages"
        with client.stream("POST", path, json={"prompt": prompt, "stream": True}) as response:
            assert response.status_code == 200
            answer = int(response.headers["X-Message-Id"])
            assert next(sse_events(response.iter_lines()))[0] == "delta"
    return conversation, answer


class Follower(threading.Thread):
    """A client reading an answer's stream from `url` to its end, in the background."""

    def __init__(self, url: str, token: str, conversation: int, answer: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.path = url, token, f"/conversations/{conversation}/messages/{answer}/stream"
        self.text = ""
        self.deltas = 0
        self.ended: str | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with api(self.url, self.token) as client, client.stream("GET", self.path) as response:
                for name, data in sse_events(response.iter_lines()):
                    if name == "delta":
                        self.text += data["text"]
                        self.deltas += 1
                    else:
                        self.ended = data["status"]
                        return
        except BaseException as exc:  # said by the test, not lost in a thread
            self.failure = exc

    def finish(self, within: float = 90) -> "Follower":
        self.join(within)
        assert not self.is_alive(), f"{self.path} did not end"
        assert self.failure is None, self.failure
        return self


def stored(database_url: str, answer: int) -> dict | None:
    """The answer's row, straight from the database; None once deleted."""
    query = "SELECT status, content, error FROM chat_message WHERE id = %s"
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            row = connection.execute(query.replace("%s", "?"), (answer,)).fetchone()
    else:
        with psycopg.connect(database_url) as connection:
            row = connection.execute(query, (answer,)).fetchone()
    return None if row is None else {"status": row[0], "content": row[1], "error": row[2]}


def is_named(database_url: str, conversation: int) -> bool:
    """Whether the model has named the conversation."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT title FROM chat_conversation WHERE id = %s", (conversation,)).fetchone()
    return row is not None and row[0] == NAMED


# --- the table -----------------------------------------------------------------------------------


@dataclass
class Tally:
    fault: str
    in_flight: int = 0
    completed: int = 0
    explained: int = 0
    lost: int = 0  # characters
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return f"| {self.fault} | {self.in_flight} | {self.completed} | {self.explained} | {self.lost} |"


def shared_start(one: str, other: str) -> int:
    """How many characters two texts have in common from their start."""
    return next((i for i, (x, y) in enumerate(zip(one, other, strict=False)) if x != y), min(len(one), len(other)))


def tally(fault: str, database_url: str, whole: str, seen: dict[int, list[str]]) -> Tally:
    """Count how the answers `seen` (answer id: the texts clients were shown of it) ended."""
    counted = Tally(fault, in_flight=len(seen))
    for answer, texts in seen.items():
        row = stored(database_url, answer)
        if row is None:  # deleted by its person, who asked for nothing to be kept
            counted.explained += 1
            continue
        assert row["status"] in TERMINAL, f"answer {answer} is still {row['status']}"
        content = row["content"]
        shown = [whole] if row["status"] == "complete" else texts
        counted.lost += sum(len(text) - shared_start(text, content) for text in shown)
        assert whole.startswith(content), f"answer {answer} holds text the model never sent"
        if row["status"] == "complete":
            counted.completed += 1
        elif row["status"] == "stopped" or row["error"]:
            counted.explained += 1
        else:
            counted.notes.append(f"answer {answer} ended {row['status']} with no reason stored")
    return counted


def record(counted: Tally) -> None:
    """Print the row, keep it in test-artifacts/faults/, and write the table of every row kept there
    (one file per fault: the tests may run in parallel) to test-artifacts/faults.md."""
    rows = ARTIFACTS / "faults"
    rows.mkdir(parents=True, exist_ok=True)
    (rows / f"{counted.fault.split()[0].lower()}.md").write_text(counted.row() + "\n")
    header = (
        "| fault | answers in flight | completed | explained endings | lost text |\n| --- | --- | --- | --- | --- |\n"
    )
    table = header + "".join(path.read_text() for path in sorted(rows.glob("*.md")))
    (ARTIFACTS / "faults.md").write_text(table)
    print(counted.row())


def assert_nothing_lost(counted: Tally) -> None:
    record(counted)
    assert not counted.notes, counted.notes
    assert counted.completed + counted.explained == counted.in_flight, counted
    assert counted.lost == 0, counted


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited(seconds: float) -> Callable[[], bool]:
    """A condition for wait_for: true once `seconds` from now have passed (a fault's length)."""
    until = time.monotonic() + seconds
    return lambda: time.monotonic() >= until


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(redis_server) -> Iterator[Redis]:
    """A Redis of this test's own, to stop and start (the run's is shared with other tests)."""
    server = Redis(redis_server.program).start()
    yield server
    server.stop()


@pytest.fixture
def own_postgresql(postgresql) -> Iterator[PostgreSQL]:
    """A PostgreSQL server of this test's own, to restart."""
    server = PostgreSQL(postgresql.bin).start()
    yield server
    server.stop()


def logged(worker: Worker, text: str) -> int:
    assert worker.output is not None
    return worker.output.read_text(errors="replace").count(text)


def test_redis_stopped_and_restarted_mid_answer(postgresql, own_redis, fake_vllm, tmp_path):
    env = workers_env(postgresql, own_redis, fake_vllm)  # 3 s leases, checkpoints every 0.2 s
    site = SiteWorkers(env, workers=3)
    a, b, c = (site.add_worker(output=tmp_path / f"worker-{name}.log") for name in "abc")
    token = env["ALICE_TOKEN"]
    try:
        fake_vllm.reply = [f" w{i}" for i in range(500)]  # within the default max_tokens (512)
        fake_vllm.token_delay = 0.04  # 20 s an answer
        whole = "".join(fake_vllm.reply)
        followed = start_turn(a.url, token)
        to_stop = start_turn(a.url, token)
        to_delete = start_turn(b.url, token)
        alone = start_turn(a.url, token)
        followers = [Follower(worker.url, token, *followed) for worker in (b, c)]
        for follower in followers:
            follower.start()
        wait_for(lambda: all(f.deltas >= 5 for f in followers), 30, "the followers to get text live")

        own_redis.stop()
        down = time.monotonic()
        cpu_before = {w.pid: cpu_seconds(w.pid) for w in (b, c)}
        with api(c.url, token) as client:
            stop = client.post(f"/conversations/{to_stop[0]}/messages/{to_stop[1]}/stop")
            stopped_after = time.monotonic() - down
            delete = client.delete(f"/conversations/{to_delete[0]}")
            deleted_after = time.monotonic() - down - stopped_after
        assert stop.status_code in (200, 202), stop.text
        assert delete.status_code == 204, delete.text
        wait_for(waited(4), 10, "the outage to last")
        busy = {pid: (cpu_seconds(pid) - before) / (time.monotonic() - down) for pid, before in cpu_before.items()}
        deltas_before_restart = [f.deltas for f in followers]
        shares = sorted(round(share, 3) for share in busy.values())
        print(f"Redis down: stop {stop.status_code} in {stopped_after:.1f} s, delete {delete.status_code} in")
        print(f"{deleted_after:.1f} s; the followers' workers used {shares} of a core meanwhile")
        own_redis.start()

        for follower in followers:
            follower.finish()
        # The followers waited out the outage (a core each before), and said so once.
        assert all(share < 0.5 for share in busy.values()), busy
        for worker in (b, c):
            assert 1 <= logged(worker, "ERROR    The Channels layer failed") <= 2
        # They got every character, once, and text live again once Redis was back.
        assert [f.text for f in followers] == [whole, whole]
        assert [f.ended for f in followers] == ["complete", "complete"]
        assert all(f.deltas - before >= 10 for f, before in zip(followers, deltas_before_restart, strict=True))

        answers = {followed[1]: [f.text for f in followers], to_stop[1]: [], to_delete[1]: [], alone[1]: []}
        database = env["DATABASE_URL"]
        wait_for(lambda: all((stored(database, x) or {"status": "gone"})["status"] != "streaming" for x in answers), 30)
        stopped = stored(database, to_stop[1])
        assert stopped is not None and stopped["status"] == "stopped", stopped
        assert stored(database, to_delete[1]) is None
        assert_nothing_lost(tally("Redis stopped and restarted mid-answer (3 workers)", database, whole, answers))
    finally:
        site.stop()


# --- PostgreSQL ----------------------------------------------------------------------------------


def untitled_first_turn(url: str, token: str) -> int:
    """A conversation with no title, whose first answer (read to its end) the model then names."""
    with api(url, token) as client:
        conversation = client.post("/conversations", json={}).json()["id"]
        sent = client.post(f"/conversations/{conversation}/messages", json={"prompt": "Name me"})
        assert sent.status_code in (200, 201), sent.text
        assert sent.json()["answer"]["status"] == "complete", sent.text
    return int(conversation)


def test_postgresql_restarted_mid_answer(own_postgresql, redis_server, fake_vllm):
    # A lease long enough to outlast the restart: only the database's absence is the fault here.
    env = workers_env(own_postgresql, redis_server, fake_vllm, CHAT_LEASE_SECONDS="8")
    site = SiteWorkers(env, workers=2).start()
    a, b = site.workers
    token, database = env["ALICE_TOKEN"], env["DATABASE_URL"]
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed([NAMED])
    try:
        # Each worker has named a conversation (its naming's connection is open) before the restart.
        for worker in (a, b):
            named = untitled_first_turn(worker.url, token)
            wait_for(functools.partial(is_named, database, named), 30, "the naming")

        fake_vllm.reply = [f" w{i}" for i in range(300)]
        fake_vllm.token_delay = 0.03  # 9 s an answer
        whole = "".join(fake_vllm.reply)
        turns = [start_turn(worker.url, token) for worker in (a, a, b, b)]
        followers = [Follower(w.url, token, *turn) for w, turn in zip((b, a, a, b), turns, strict=True)]
        for follower in followers:
            follower.start()
        wait_for(lambda: all(f.deltas >= 5 for f in followers), 30, "the followers to get text")

        own_postgresql.restart()

        for follower in followers:
            follower.finish()
        answers = {turn[1]: [f.text] for turn, f in zip(turns, followers, strict=True)}
        wait_for(lambda: all(stored(database, x)["status"] in TERMINAL for x in answers), 30)  # type: ignore[index]
        counted = tally("PostgreSQL restarted mid-answer (2 workers)", database, whole, answers)

        # The pools recovered: each worker runs a whole turn again, and names its conversation.
        fake_vllm.reply = ["Back", " again"]
        fake_vllm.token_delay = 0
        for worker in (a, b):
            named = untitled_first_turn(worker.url, token)
            wait_for(functools.partial(is_named, database, named), 30, "the naming after the restart")
        assert_nothing_lost(counted)
    finally:
        site.stop()


# --- SQLite --------------------------------------------------------------------------------------

# Half a minute, as a backup or a long migration holds it. The site's lock wait is shortened so that
# the lock outlasts it many times over: each checkpoint and each try of an answer's end in that
# time fails with "database is locked", as one would after the default 20 s.
LOCK_TIMEOUT = 1.0
LOCKED_FOR = 30.0

HOLD_THE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes it
connection.execute("COMMIT")
"""


def test_sqlite_held_locked_by_another_process_mid_answer(fake_vllm, tmp_path):
    database = f"sqlite:///{tmp_path / 'site.sqlite3'}"
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database,
        "VLLM_BASE_URL": fake_vllm.base_url,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "CHAT_CHECKPOINT_SECONDS": "0.2",
    }
    token = migrate_and_add_alice(env)
    site = SiteProcess(env).start()
    try:
        fake_vllm.reply = [f" w{i}" for i in range(500)]
        fake_vllm.token_delay = 0.03  # 15 s an answer
        whole = "".join(fake_vllm.reply)
        turns = [start_turn(site.url, token) for _ in range(3)]
        followers = [Follower(site.url, token, *turn) for turn in turns]
        for follower in followers:
            follower.start()
        wait_for(lambda: all(stored(database, t[1])["content"] for t in turns), 30, "checkpoints")  # type: ignore[index]

        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path / "site.sqlite3")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        at_lock = [stored(database, t[1])["content"] for t in turns]  # type: ignore[index]
        wait_for(waited(LOCKED_FOR), LOCKED_FOR + 5, "the lock to be held")
        # Nothing was written meanwhile: the lock was real, every checkpoint in it failed.
        assert [stored(database, t[1])["content"] for t in turns] == at_lock  # type: ignore[index]
        holder.stdin.close()
        assert holder.wait(10) == 0

        for follower in followers:
            follower.finish()
        assert [f.ended for f in followers] == ["complete"] * 3
        answers = {turn[1]: [f.text] for turn, f in zip(turns, followers, strict=True)}
        counted = tally(
            f"SQLite locked {LOCKED_FOR:g} s by another process (lock wait {LOCK_TIMEOUT:g} s)",
            database,
            whole,
            answers,
        )
        assert counted.completed == 3
        assert_nothing_lost(counted)
    finally:
        site.stop()


# --- clocks --------------------------------------------------------------------------------------


def test_a_worker_whose_clock_runs_a_minute_ahead_leaves_the_others_live_answers_alone(
    postgresql, redis_server, fake_vllm
):
    env = workers_env(postgresql, redis_server, fake_vllm)  # 3 s leases, renewed every second
    site = SiteWorkers(env, workers=1).start()
    a = site.workers[0]
    skewed = site.add_worker(TEST_CLOCK_SKEW_SECONDS="60")
    token, database = env["ALICE_TOKEN"], env["DATABASE_URL"]
    try:
        fake_vllm.reply = [f" w{i}" for i in range(250)]
        fake_vllm.token_delay = 0.03  # 7.5 s an answer: longer than two leases
        whole = "".join(fake_vllm.reply)
        turns = [start_turn(worker.url, token) for worker in (a, a, skewed)]
        # Each worker follows the other's answers too: a follower's look settles dead owners' answers.
        followers = [Follower(w.url, token, *turn) for w, turn in zip((skewed, skewed, a), turns, strict=True)]
        for follower in followers:
            follower.start()

        for follower in followers:
            follower.finish()
        answers = {turn[1]: [f.text] for turn, f in zip(turns, followers, strict=True)}
        assert [f.ended for f in followers] == ["complete"] * 3
        counted = tally("A worker's clock 60 s ahead (2 workers)", database, whole, answers)
        assert counted.completed == 3
        assert_nothing_lost(counted)
    finally:
        site.stop()


# --- a database away: what every door answers ----------------------------------------------------


def signed_in_session(url: str) -> httpx.Client:
    """A browser-like client signed in as alice through the sign-in form."""
    client = httpx.Client(base_url=url, timeout=60)
    client.get("/accounts/login/")
    form = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
    signed = client.post("/accounts/login/", data=form, headers={"Referer": f"{url}/accounts/login/"})
    assert signed.status_code == 302, signed.text
    return client


def test_a_database_that_is_away_is_a_503_saying_so_on_every_door_and_the_site_recovers(
    own_postgresql, redis_server, fake_vllm
):
    # A pool that waits 2 s for a connection, not 20: the same PoolTimeout, sooner.
    env = workers_env(own_postgresql, redis_server, fake_vllm, DATABASE_POOL_TIMEOUT="2")
    site = SiteProcess(env).start()
    token = env["ALICE_TOKEN"]
    browser = signed_in_session(site.url)
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        with api(site.url, token) as client:
            conversation = client.post("/conversations", json={"title": "Before"}).json()["id"]
        own_postgresql.halt()

        rest = httpx.get(f"{site.url}/api/conversations", headers=bearer, timeout=60)
        assert rest.status_code == 503, rest.text
        assert rest.headers["Retry-After"] == "5"
        assert "database is not answering" in rest.json()["detail"]

        openai = httpx.get(f"{site.url}/v1/models", headers=bearer, timeout=60)
        assert openai.status_code == 503, openai.text
        assert openai.json()["error"]["code"] == "database_unavailable"

        # The page's session is read from the database too, before any view runs.
        page = browser.get(f"/c/{conversation}/")
        assert page.status_code == 503, page.text
        assert "database is not answering" in page.text
        assert page.headers["Retry-After"] == "5"

        own_postgresql.resume()
        wait_for(lambda: browser.get(f"/c/{conversation}/").status_code == 200, 60, "the page after the restart")
        back = httpx.get(f"{site.url}/api/conversations", headers=bearer, timeout=60)
        assert back.status_code == 200 and [c["id"] for c in back.json()["items"]] == [conversation]
    finally:
        browser.close()
        site.stop()
