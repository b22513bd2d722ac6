"""The site as three daphne workers on one port, on a real PostgreSQL and Redis, against the fake vLLM.

A turn belongs to the worker that started it; any worker can follow it, stop it, or resume a
stream from Last-Event-ID; a worker that starts leaves the others' answers alone, and one killed
outright leaves its answers to be marked interrupted once its lease runs out (CHAT_LEASE_SECONDS is
3 here). The workers are addressed one by one through ports of their own, and all together through
the shared one.

The tests that neither kill a worker nor change the site's settings share one site of three workers
(`site_workers` below): each start of three costs some 8 CPU-seconds, on a machine whose two cores are
the suite's bound. Each test finds it with no answer streaming and no conversation of alice's.
"""

import asyncio
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.fixtures_servers import workers_env
from tests.site_server import SiteWorkers, Worker
from tests.sse import sse_events, sse_events_async, sse_events_with_ids
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

TERMINAL = {"complete", "stopped", "error", "interrupted"}


@contextmanager
def api(url: str, site: SiteWorkers) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {site.env['ALICE_TOKEN']}"}
    with httpx.Client(base_url=f"{url}/api", headers=headers, timeout=30) as client:
        yield client


def stored(site: SiteWorkers, answer: int) -> dict:
    """The answer's row, straight from PostgreSQL."""
    with psycopg.connect(site.env["DATABASE_URL"]) as connection:
        status, content, worker, error = connection.execute(
            "SELECT status, content, worker, error FROM chat_message WHERE id = %s", (answer,)
        ).fetchone()  # type: ignore[misc]
    return {"status": status, "content": content, "worker": worker, "error": error}


def owner_pid(site: SiteWorkers, answer: int) -> int:
    return int(stored(site, answer)["worker"].split(".")[2])  # worker.<host>.<pid>.<random>


def start_turn(worker: Worker, site: SiteWorkers, prompt: str = "Go") -> tuple[int, int]:
    """(conversation id, answer id) of a turn started on `worker`, whose client leaves after the
    first delta: the REST door's answer goes on without it."""
    with api(worker.url, site) as client:
        conversation = client.post("/conversations", json={"title": prompt}).json()["id"]
        path = f"/conversations/{conversation}/messages"
        with client.stream("POST", path, json={"prompt": prompt, "stream": True}) as response:
            assert response.status_code == 200
            answer = int(response.headers["X-Message-Id"])
            assert next(sse_events(response.iter_lines()))[0] == "delta"
    return conversation, answer


def stream_path(conversation: int, answer: int) -> str:
    return f"/conversations/{conversation}/messages/{answer}/stream"


@pytest.fixture(scope="module")
def shared_site_workers(postgresql, redis_server, fake_vllm_server) -> Iterator[SiteWorkers]:
    """The site as three daphne workers on one port, on PostgreSQL and Redis, against the fake vLLM,
    started once for the module: see `site_workers`."""
    site = SiteWorkers(workers_env(postgresql, redis_server, fake_vllm_server)).start()
    yield site
    site.stop()


def streaming(site: SiteWorkers) -> int:
    """How many answers are streaming, straight from PostgreSQL."""
    with psycopg.connect(site.env["DATABASE_URL"]) as connection:
        row = connection.execute("SELECT count(*) FROM chat_message WHERE status = 'streaming'").fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def site_workers(shared_site_workers, fake_vllm) -> SiteWorkers:
    """The module's three workers, as the previous test left them but for its data: its answers
    ended (the fake vLLM's reset has closed any it left going) and alice's conversations deleted,
    through the site as she would (the last test counts hers). The test that kills a worker has a
    site of its own (`own_site_workers`), as has the one that needs the site's own lease."""
    site = shared_site_workers
    wait_for(lambda: streaming(site) == 0, 60, "the previous test's answers to end")
    with api(site.url, site) as client:
        while conversations := client.get("/conversations", params={"limit": 100}).json()["items"]:
            for conversation in conversations:
                assert client.delete(f"/conversations/{conversation['id']}").status_code == 204
    return site


def test_a_turn_started_on_a_is_followed_live_from_b_and_stopped_from_c(site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(400)]
    fake_vllm.token_delay = 0.02
    a, b, c = site_workers.workers
    conversation, answer = start_turn(a, site_workers)
    assert owner_pid(site_workers, answer) == a.pid
    stops: list[httpx.Response] = []

    def stop_from_c() -> None:
        with api(c.url, site_workers) as client:
            stops.append(client.post(f"/conversations/{conversation}/messages/{answer}/stop"))

    received, deltas, ended = "", 0, None
    stopping = threading.Thread(target=stop_from_c)
    with api(b.url, site_workers) as client, client.stream("GET", stream_path(conversation, answer)) as response:
        for name, data in sse_events(response.iter_lines()):
            if name == "delta":
                received += data["text"]
                deltas += 1
                if deltas == 20:
                    stopping.start()
            else:
                ended = (name, data)
                break
    stopping.join()

    assert ended is not None and ended[0] == "done" and ended[1]["status"] == "stopped"
    assert deltas > 20  # live: delta after delta from B while A generated
    row = stored(site_workers, answer)
    assert row["status"] == "stopped"
    assert received == row["content"] == stops[0].json()["content"]
    assert " w0 w1 w2" in received and len(received) < len("".join(fake_vllm.reply))
    assert fake_vllm.wait_for_disconnect()  # A closed its request to vLLM


def test_deleting_a_conversation_on_c_stops_its_turn_on_a(site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(400)]
    fake_vllm.token_delay = 0.02
    a, _, c = site_workers.workers
    conversation, answer = start_turn(a, site_workers)

    with api(c.url, site_workers) as client:
        assert client.delete(f"/conversations/{conversation}").status_code == 204

    assert fake_vllm.wait_for_disconnect(timeout=10)  # A stopped generating
    with psycopg.connect(site_workers.env["DATABASE_URL"]) as connection:
        assert connection.execute("SELECT count(*) FROM chat_message WHERE id = %s", (answer,)).fetchone() == (0,)


def test_a_worker_starting_and_a_follow_elsewhere_leave_a_live_answer_alone(site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(400)]
    fake_vllm.token_delay = 0.04
    a = site_workers.workers[0]
    conversation, answer = start_turn(a, site_workers)
    # The engine holds the rest of the answer while the new worker starts, however long a busy
    # machine takes to start one (16 s of answer was not always enough beside a CPU hog).
    fake_vllm.delta_gate = threading.Event()

    d = site_workers.add_worker()  # its start sweeps for dead workers' answers (stopped if it never answers)
    try:
        assert stored(site_workers, answer)["status"] == "streaming"
        fake_vllm.delta_gate.set()
        with api(d.url, site_workers) as client, client.stream("GET", stream_path(conversation, answer)) as response:
            events = list(sse_events(response.iter_lines()))
    finally:
        site_workers.stop_worker(d)  # the shared site's three again, for the next test

    text = "".join(data["text"] for name, data in events if name == "delta")
    assert events[-1][0] == "done" and events[-1][1]["status"] == "complete"
    assert text == "".join(fake_vllm.reply) == stored(site_workers, answer)["content"]
    assert owner_pid(site_workers, answer) == a.pid


def test_a_reconnect_with_last_event_id_on_another_worker_resumes_with_no_gap_and_no_duplicate(site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(150)]
    fake_vllm.token_delay = 0.02
    a, b, c = site_workers.workers
    conversation, answer = start_turn(a, site_workers)

    before, last_id = "", ""
    with api(b.url, site_workers) as client, client.stream("GET", stream_path(conversation, answer)) as response:
        for name, data, event_id in sse_events_with_ids(response.iter_lines()):
            assert name == "delta"
            before += data["text"]
            last_id = event_id
            if len(before) > 60:
                break  # the connection drops
    assert last_id == str(len(before))

    after = ""
    with api(c.url, site_workers) as client:
        resumed = client.stream("GET", stream_path(conversation, answer), headers={"Last-Event-ID": last_id})
        with resumed as response:
            for name, data, _ in sse_events_with_ids(response.iter_lines()):
                if name == "delta":
                    after += data["text"]
                else:
                    assert data["status"] == "complete"

    assert before + after == "".join(fake_vllm.reply) == stored(site_workers, answer)["content"]


def test_killing_a_worker_interrupts_its_answers_once_their_lease_expires_and_only_those(own_site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(250)]
    fake_vllm.token_delay = 0.03  # 7.5 s an answer
    a, b, _ = own_site_workers.workers
    on_a = [start_turn(a, own_site_workers)[1] for _ in range(2)]
    on_b = start_turn(b, own_site_workers)[1]
    assert {owner_pid(own_site_workers, answer) for answer in on_a} == {a.pid}
    wait_for(lambda: all(stored(own_site_workers, answer)["content"] for answer in on_a), what="A's checkpoints")

    a.kill()
    killed_at = time.monotonic()
    assert all(stored(own_site_workers, answer)["status"] == "streaming" for answer in on_a)  # until the lease expires

    wait_for(lambda: all(stored(own_site_workers, x)["status"] == "interrupted" for x in on_a), 20, "A's answers")
    assert time.monotonic() - killed_at > 1  # not before the lease had run out (3 s from A's last renewal)
    whole = "".join(fake_vllm.reply)
    for answer in on_a:
        row = stored(own_site_workers, answer)
        assert row["content"] and whole.startswith(row["content"]) and row["content"] != whole
    wait_for(lambda: stored(own_site_workers, on_b)["status"] in TERMINAL, 30, "B's answer")
    b_answer = stored(own_site_workers, on_b)
    assert (b_answer["status"], b_answer["content"]) == ("complete", whole)


# --- many streams at once, through the shared port ---------------------------------------------

# 200 streams, as the issue asks, take about a minute on a 2-core machine shared with PostgreSQL,
# Redis, the fake vLLM and this test's clients; CHAOS_STREAMS lowers it for a quick run.
STREAMS = int(os.environ.get("CHAOS_STREAMS", "200"))


@dataclass
class Client:
    role: str  # reads, leaves (at a random delta) or stopped (from a random worker)
    received: str = ""
    ended: str | None = None  # the status its stream ended with, if it read to the end
    statuses: list[int] = field(default_factory=list)
    answer: int = 0


async def one_client(site: SiteWorkers, number: int, client: Client, rng: random.Random) -> Client:
    headers = {"Authorization": f"Bearer {site.env['ALICE_TOKEN']}"}
    await asyncio.sleep(rng.uniform(0, 3))  # people arrive over a few seconds, not in one burst
    # Half through the shared port, as people come; half straight to a worker, round the three, so
    # that each surely owns some (Twisted accepts up to a hundred waiting connections at a time,
    # so a burst on the shared port can all go to one or two of them).
    url = site.url if number % 2 else site.workers[number // 2 % len(site.workers)].url
    async with httpx.AsyncClient(base_url=f"{url}/api", headers=headers, timeout=120) as http:
        created = await http.post("/conversations", json={"title": f"Stream {number}"})
        client.statuses.append(created.status_code)
        path = f"/conversations/{created.json()['id']}/messages"
        leave_after = rng.randint(1, 20)
        async with http.stream("POST", path, json={"prompt": "Go", "stream": True}) as response:
            client.statuses.append(response.status_code)
            client.answer = int(response.headers["X-Message-Id"])
            deltas = 0
            async for name, data in sse_events_async(response.aiter_bytes()):
                if name != "delta":
                    client.ended = data["status"]
                    break
                client.received += data["text"]
                deltas += 1
                if client.role == "leaves" and deltas == leave_after:
                    break
                if client.role == "stopped" and deltas == leave_after:
                    # From another worker, chosen at random: the stop must reach the owner.
                    worker = rng.choice([w for w in site.workers if w.process.poll() is None])
                    stop = await http.post(f"{worker.url}/api{path}/{client.answer}/stop")
                    client.statuses.append(stop.status_code)
    return client


def test_many_streams_across_three_workers_with_clients_leaving_and_stopping(busy_site_workers, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(40)]
    fake_vllm.token_delay = 0.05  # 2 s an answer
    rng = random.Random(9)
    roles = ["leaves"] * (STREAMS * 3 // 10) + ["stopped"] * (STREAMS // 10)
    roles += ["reads"] * (STREAMS - len(roles))
    rng.shuffle(roles)

    async def everyone() -> list[Client]:
        return await asyncio.gather(
            *(one_client(busy_site_workers, n, Client(role), rng) for n, role in enumerate(roles))
        )

    clients = asyncio.run(everyone())

    assert all(status < 500 for client in clients for status in client.statuses), "a 5xx"
    answers = {client.answer: client for client in clients}
    wait_for(
        lambda: all(stored(busy_site_workers, answer)["status"] in TERMINAL for answer in answers),
        60,
        "every answer to end",
    )
    whole = "".join(fake_vllm.reply)
    owners = set()
    for answer, client in answers.items():
        row = stored(busy_site_workers, answer)
        owners.add(owner_pid(busy_site_workers, answer))
        # Never shorter than what a connected client received, and the same text.
        assert row["content"].startswith(client.received), (row, client)
        if client.role == "reads":
            assert row["status"] == client.ended == "complete" and row["content"] == whole, (row, client)
        elif client.role == "leaves":
            assert row["status"] == "complete" and row["content"] == whole, (row, client)  # the REST door goes on
        else:
            assert row["status"] in ("stopped", "complete"), (row, client)
            assert client.ended == row["status"] and client.received == row["content"], (row, client)
    assert owners == {worker.pid for worker in busy_site_workers.workers}


def test_an_sdk_session_over_every_worker_is_one_conversation_on_postgresql(site_workers, fake_vllm):
    # Each call on another worker: the conversation it continues is found in the database, not in a worker.
    history: list[Any] = []
    for n, worker in enumerate(site_workers.workers):
        sdk = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=site_workers.env["ALICE_TOKEN"], max_retries=0)
        history.append({"role": "user", "content": f"Question {n}?"})
        fake_vllm.reply = [f"Answer {n}."]
        if n == 1:
            chunks = sdk.chat.completions.create(model="qwen2-7b-instruct", messages=history, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = (
                sdk.chat.completions.create(model="qwen2-7b-instruct", messages=history).choices[0].message.content
                or ""
            )
        history.append({"role": "assistant", "content": text})

    with api(site_workers.url, site_workers) as client:
        [conversation] = client.get("/conversations").json()["items"]
        messages = client.get(f"/conversations/{conversation['id']}").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [(m["role"], m["content"]) for m in history]
