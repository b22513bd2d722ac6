"""The site on PostgreSQL with a pool smaller than the answers it streams: every door's answers, held
mid-stream by the fake vLLM, leave the pool to the requests beside them.

A worker's pool (DATABASE_POOL_SIZE, chatsite/settings.py) is a few connections, its streams many:
an answer followed for minutes must not keep one the whole time, and no request may hold one while
it waits for something that needs another (the engine catalog reading the admin's engines), or the
next requests wait for one (DATABASE_POOL_TIMEOUT) and are answered 503: tests/test_workers.py's
many streams once got four on POST /api/conversations so. Here the pool has one connection, which
any such wait holds for good; new conversations ask the catalog as it is first read, then each door
streams 2 answers at once while a list of conversations is read and a new conversation made. The
same for each door whose prompt vLLM's /tokenize counts (a prompt too long for the bound by bytes),
held by the fake vLLM while it counts.
"""

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from tests.accounts import login
from tests.fake_vllm import DEFAULT_REPLY
from tests.fixtures_servers import workers_env
from tests.site_server import SiteProcess
from tests.sse import sse_frames
from tests.waiting import WAIT_WITHIN, wait_for_async

pytestmark = pytest.mark.timeout(300)

# Connections in the worker's pool: one, so that anything that holds one while it waits for another
# waits for ever (until DATABASE_POOL_TIMEOUT), however briefly it would hold both.
POOL = 1
STREAMS = POOL + 1  # answers one door streams at once
REPLY = ["Held", " here."]  # the gate holds each answer after its first delta

# A door's answer, read to its end by a client that sets `streaming` once it has the first delta
# (a door that answers only once the answer is whole cannot say: the fake vLLM's count of deltas sent
# says for it); returns the text the client received.
type Door = Callable[["Clients", int, asyncio.Event], Awaitable[str]]


class Clients:
    """alice's clients: her signed-in browser (the page) and her API token (the REST, OpenAI and
    model-compose doors)."""

    def __init__(self, site: SiteProcess, token: str, browser_cookies: httpx.Cookies) -> None:
        self.page = httpx.AsyncClient(base_url=site.url, cookies=browser_cookies, timeout=60)
        self.api = httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    async def aclose(self) -> None:
        await self.page.aclose()
        await self.api.aclose()

    async def page_send(self, n: int) -> tuple[int, int]:
        """(conversation id, answer id) of a prompt sent as the page's htmx form sends it."""
        headers = {"X-CSRFToken": self.page.cookies["csrftoken"], "HX-Request": "true"}
        sent = await self.page.post("/c/new/send", data={"prompt": f"Prompt {n}"}, headers=headers)
        assert sent.status_code == 200, sent.text
        found = re.search(r'data-stream-url="/c/(\d+)/m/(\d+)/stream"', sent.text)
        assert found is not None, sent.text
        return int(found[1]), int(found[2])

    async def new_conversation(self, title: str) -> int:
        created = await self.api.post("/api/conversations", json={"title": title})
        assert created.status_code == 201, created.text
        return int(created.json()["id"])


async def read_sse(response: httpx.Response, streaming: asyncio.Event) -> list[tuple[str, str]]:
    """The stream's (event name, data), to its end; `streaming` is set at its first data."""
    assert response.status_code == 200, (await response.aread()).decode()
    lines = []
    async for line in response.aiter_lines():
        lines.append(line)
        if line.startswith("data:"):
            streaming.set()
    return list(sse_frames(lines))


def site_text(frames: list[tuple[str, str]]) -> str:
    """The text of the site's own events (chat/sse.py): the page's and the REST API's."""
    return "".join(json.loads(data)["text"] for name, data in frames if name == "delta")


async def page(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    conversation, answer = await clients.page_send(n)
    async with clients.page.stream("GET", f"/c/{conversation}/m/{answer}/stream") as response:
        return site_text(await read_sse(response, streaming))


async def rest_streamed(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    path = f"/api/conversations/{await clients.new_conversation(f'REST {n}')}/messages"
    async with clients.api.stream("POST", path, json={"prompt": "Go", "stream": True}) as response:
        return site_text(await read_sse(response, streaming))


async def rest_followed(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    conversation, answer = await clients.page_send(n)
    path = f"/api/conversations/{conversation}/messages/{answer}/stream"
    async with clients.api.stream("GET", path) as response:
        return site_text(await read_sse(response, streaming))


async def rest_whole(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    path = f"/api/conversations/{await clients.new_conversation(f'REST {n}')}/messages"
    answered = await clients.api.post(path, json={"prompt": "Go"})
    assert answered.status_code == 200, answered.text
    return str(answered.json()["answer"]["content"])


def _completion(stream: bool) -> dict[str, object]:
    return {"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": "Go"}], "stream": stream}


async def openai_streamed(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    async with clients.api.stream("POST", "/v1/chat/completions", json=_completion(True)) as response:
        chunks = [json.loads(data) for _, data in await read_sse(response, streaming) if data != "[DONE]"]
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


async def openai_whole(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    answered = await clients.api.post("/v1/chat/completions", json=_completion(False))
    assert answered.status_code == 200, answered.text
    return str(answered.json()["choices"][0]["message"]["content"])


async def model_compose(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    run = {"input": {"prompt": "Go"}}
    async with clients.api.stream("POST", "/api/workflows/runs", json=run) as response:
        return "".join(data for _, data in await read_sse(response, streaming))  # sse-text: the text itself


async def temporary(clients: Clients, n: int, streaming: asyncio.Event) -> str:
    headers = {"X-CSRFToken": clients.page.cookies["csrftoken"]}
    async with clients.page.stream(
        "POST", "/temporary/send", data={"prompt": f"Prompt {n}"}, headers=headers
    ) as response:
        return site_text(await read_sse(response, streaming))


async def requests_beside(clients: Clients, name: str) -> list[str]:
    """A list of conversations read and a conversation made while `name`'s request waits: those refused."""
    listed = await clients.api.get("/api/conversations")
    created = await clients.api.post("/api/conversations", json={"title": f"Beside {name}"})
    return [f"{r.request.method} {r.url.path}: {r.status_code}" for r in (listed, created) if r.is_error]


DOORS: dict[str, tuple[Door, bool]] = {  # each door, and whether its client sees the first delta
    "the page's stream": (page, True),
    "the REST API's streamed answer": (rest_streamed, True),
    "the REST API's stream of an answer": (rest_followed, True),
    "the REST API's whole answer": (rest_whole, False),
    "the OpenAI API's streamed completion": (openai_streamed, True),
    "the OpenAI API's whole completion": (openai_whole, False),
    "model-compose's workflow run": (model_compose, True),
    "the temporary chat's stream": (temporary, True),
}


@pytest.fixture
def small_pool_site(postgresql, fake_vllm) -> Iterator[SiteProcess]:
    """One worker (no Redis) on PostgreSQL, with a pool of POOL connections, lent for at most 10 s."""
    env = workers_env(postgresql, None, fake_vllm, DATABASE_POOL_SIZE=str(POOL), DATABASE_POOL_TIMEOUT="10")
    site = SiteProcess(env).start()
    yield site
    site.stop()


def test_answers_streaming_on_every_door_leave_the_pool_to_other_requests(small_pool_site, fake_vllm):
    fake_vllm.reply = REPLY
    fake_vllm.delta_gate_from = 1
    with httpx.Client(base_url=small_pool_site.url, timeout=60) as browser:
        login(browser, "alice")
        cookies = browser.cookies
    refused: dict[str, list[str]] = {}

    async def through(name: str, door: Door, client_sees_it: bool, clients: Clients) -> None:
        gate = fake_vllm.delta_gate = threading.Event()
        sent_before = fake_vllm.generated_tokens
        streaming = [asyncio.Event() for _ in range(STREAMS)]
        answers = [asyncio.ensure_future(door(clients, n, streaming[n])) for n in range(STREAMS)]
        try:
            # Every answer held mid-stream: its first delta sent (and, where the client sees it, received).
            await wait_for_async(lambda: fake_vllm.generated_tokens >= sent_before + STREAMS, what=f"{name}'s answers")
            if client_sees_it:
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in streaming)), WAIT_WITHIN)
            if failed := await requests_beside(clients, name):
                refused[name] = failed
        finally:
            gate.set()
            texts = await asyncio.gather(*answers)
        assert texts == ["".join(REPLY)] * STREAMS, (name, texts)

    async def every_door() -> None:
        clients = Clients(small_pool_site, small_pool_site.env["ALICE_TOKEN"], cookies)
        try:
            # The engine catalog not read yet: each new conversation asks it whether its model may
            # be used (api/rest.py), and it reads the admin's engines meanwhile.
            first = [clients.api.post("/api/conversations", json={"title": f"First {n}"}) for n in range(STREAMS)]
            if failed := [f"{r.status_code}" for r in await asyncio.gather(*first) if r.is_error]:
                refused["new conversations while the catalog is read"] = failed
            for name, (door, client_sees_it) in DOORS.items():
                await through(name, door, client_sees_it, clients)
        finally:
            await clients.aclose()

    asyncio.run(every_door())
    # Each a 503 after DATABASE_POOL_TIMEOUT: the pool's connection was held by a request that waited.
    assert refused == {}


# A prompt whose bound by bytes (chat/context.py) is over the fake's 2048-token context less the
# 512 tokens of an answer, but whose tokens are not: fitting it asks vLLM's /tokenize.
COUNTED_PROMPT = "word " * 1000


async def openai_counted(clients: Clients) -> str:
    # Its prompt fitted before anything is saved (chat/context.py `check_prompt_fits`).
    completion = {"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": COUNTED_PROMPT}]}
    answered = await clients.api.post("/v1/chat/completions", json=completion)
    return str(answered.json()["choices"][0]["message"]["content"]) if answered.status_code == 200 else answered.text


async def model_compose_counted(clients: Clients) -> str:
    run = {"input": {"prompt": COUNTED_PROMPT}}
    async with clients.api.stream("POST", "/api/workflows/runs", json=run) as response:
        if response.status_code != 200:
            return (await response.aread()).decode()
        return "".join(data for _, data in await read_sse(response, asyncio.Event()))


async def temporary_counted(clients: Clients) -> str:
    # Fitted as it streams, on the request's own thread (chat/temporary.py `answer`).
    headers = {"X-CSRFToken": clients.page.cookies["csrftoken"]}
    async with clients.page.stream(
        "POST", "/temporary/send", data={"prompt": COUNTED_PROMPT}, headers=headers
    ) as response:
        if response.status_code != 200:
            return (await response.aread()).decode()
        return site_text(await read_sse(response, asyncio.Event()))


async def turn_counted(clients: Clients) -> str:
    # Fitted in the turn's own task (chat/running_turn.py), after the request that started it.
    path = f"/api/conversations/{await clients.new_conversation('Counted')}/messages"
    answered = await clients.api.post(path, json={"prompt": COUNTED_PROMPT})
    return str(answered.json()["answer"]["content"]) if answered.status_code == 200 else answered.text


COUNTING_DOORS: dict[str, Callable[[Clients], Awaitable[str]]] = {
    "the OpenAI API's completion": openai_counted,
    "model-compose's workflow run": model_compose_counted,
    "the temporary chat": temporary_counted,
    "a turn": turn_counted,
}


def test_prompts_counted_by_vllm_leave_the_pool_to_other_requests(small_pool_site, fake_vllm):
    # vLLM's /tokenize may take seconds (up to 10, engine/vllm_client.py `count_prompt_tokens`), and
    # a turn may ask it several times: a request that held the pool's one connection meanwhile
    # would leave the requests beside it none.
    with httpx.Client(base_url=small_pool_site.url, timeout=60) as browser:
        login(browser, "alice")
        cookies = browser.cookies
    refused: dict[str, list[str]] = {}
    answers: dict[str, str] = {}

    async def through(name: str, door: Callable[[Clients], Awaitable[str]], clients: Clients) -> None:
        # What the site serves read just now, so that the door reads none of it: its only wait is /tokenize.
        assert (await clients.api.get("/v1/models")).status_code == 200
        gate = fake_vllm.tokenize_gate = threading.Event()
        counted_before = len(fake_vllm.tokenize_requests)
        answer = asyncio.ensure_future(door(clients))
        try:
            await wait_for_async(lambda: len(fake_vllm.tokenize_requests) > counted_before, what=f"{name}'s count")
            if failed := await requests_beside(clients, name):
                refused[name] = failed
        finally:
            gate.set()
            answers[name] = await answer

    async def every_door() -> None:
        clients = Clients(small_pool_site, small_pool_site.env["ALICE_TOKEN"], cookies)
        try:
            for name, door in COUNTING_DOORS.items():
                await through(name, door, clients)
        finally:
            await clients.aclose()

    asyncio.run(every_door())
    # Each a 503 after DATABASE_POOL_TIMEOUT: the pool's connection was held while /tokenize was.
    assert refused == {}
    # Each counted as vLLM said, not refused as too long by the bound alone (vLLM not answering).
    assert answers == dict.fromkeys(COUNTING_DOORS, "".join(DEFAULT_REPLY))
