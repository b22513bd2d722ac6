"""The site in its own daphne process, over real sockets, against the fake vLLM on loopback."""

import json
from collections.abc import Iterator

import httpx
import pytest

from chat.models import Message
from tests.conftest import PASSWORD, site_env
from tests.site_server import SiteProcess, csrf_headers, login
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(live_site, alice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_site.url, timeout=10) as client:
        login(client, "alice", PASSWORD)
        yield client


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    name, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def send(client: httpx.Client, prompt: str, url: str = "/c/new/send", **fields) -> httpx.Response:
    response = client.post(url, data={"prompt": prompt, **fields}, headers=csrf_headers(client))
    assert response.status_code == 200, response.text
    return response


def stream_url(response: httpx.Response) -> str:
    return f"/c/{response.headers['X-Conversation-Id']}/m/{response.headers['X-Message-Id']}/stream"


def test_a_prompt_streams_to_the_browser_and_is_found_again(browser, fake_vllm):
    fake_vllm.reply = ["Local", " AI", " keeps", " <b>your</b>", " data."]
    sent = send(browser, "Explain the benefits of local AI models", temperature="0.3", max_tokens="64")
    assert "Explain the benefits of local AI models" in sent.text

    with browser.stream("GET", stream_url(sent)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = list(sse_events(response))

    deltas = [data["text"] for name, data in events if name == "delta"]
    assert "".join(deltas) == "Local AI keeps <b>your</b> data."
    name, done = events[-1]
    assert name == "done"
    assert done["status"] == "complete"
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 5
    assert done["timings"]["duration"] > 0
    assert fake_vllm.requests[-1]["temperature"] == 0.3
    assert fake_vllm.requests[-1]["max_tokens"] == 64

    page = browser.get(sent.headers["X-Conversation-Url"])
    assert "Local AI keeps &lt;b&gt;your&lt;/b&gt; data." in page.text
    assert Message.objects.get(pk=done["message_id"]).status == Message.Status.COMPLETE


def test_stop_ends_the_answer_and_vllm_sees_the_request_closed(browser, fake_vllm):
    fake_vllm.reply = [f" word{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    sent = send(browser, "Talk forever")
    stop_url = stream_url(sent).replace("/stream", "/stop")

    with browser.stream("GET", stream_url(sent)) as response:
        events = sse_events(response)
        assert next(events)[0] == "delta"
        stopped = browser.post(stop_url, headers=csrf_headers(browser)).json()
        rest = list(events)

    assert stopped["status"] == "stopped"
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "stopped"
    assert fake_vllm.wait_for_disconnect(timeout=5)
    stored = Message.objects.get(pk=stopped["message_id"])
    assert stored.status == Message.Status.STOPPED
    assert stored.content and stored.content == stopped["content"]


def test_an_answer_outlives_the_browser_and_can_be_followed_live_again(browser, fake_vllm):
    fake_vllm.reply = [f" t{i}" for i in range(60)]
    fake_vllm.token_delay = 0.03
    sent = send(browser, "Keep going without me")

    with browser.stream("GET", stream_url(sent)) as response:
        events = sse_events(response)
        seen = "".join(next(events)[1]["text"] for _ in range(5))
    # The tab is closed. Reopening the conversation follows the answer still growing.
    page = browser.get(sent.headers["X-Conversation-Url"])
    assert 'data-stream-url="' in page.text
    with browser.stream("GET", stream_url(sent)) as response:
        reopened = list(sse_events(response))
    assert reopened[0][1]["text"].startswith(seen)  # it begins with the text so far, in one delta
    text = "".join(data["text"] for name, data in reopened if name == "delta")
    assert text == "".join(fake_vllm.reply)
    assert reopened[-1][1]["status"] == "complete"
    assert fake_vllm.disconnects() == 0
    assert Message.objects.get(pk=sent.headers["X-Message-Id"]).content == text


def test_a_vllm_failure_is_shown_and_stored(browser, fake_vllm):
    fake_vllm.fault = "server_error"
    sent = send(browser, "Break please")
    with browser.stream("GET", stream_url(sent)) as response:
        events = list(sse_events(response))

    assert events[-1][0] == "error"
    assert "The model server failed (500)" in events[-1][1]["message"]
    stored = Message.objects.get(pk=sent.headers["X-Message-Id"])
    assert stored.status == Message.Status.ERROR
    assert stored.error == events[-1][1]["message"]
    page = browser.get(sent.headers["X-Conversation-Url"])
    assert "The model server failed (500)" in page.text


def test_healthz_reports_whether_vllm_answers(live_site, browser, fake_vllm):
    up = httpx.get(f"{live_site.url}/healthz")
    assert up.status_code == 200 and up.json() == {"site": "ok", "vllm": "ok"}  # no details for strangers
    fake_vllm.fault = "refuse"
    down = httpx.get(f"{live_site.url}/healthz")
    assert down.status_code == 503
    assert down.json() == {"site": "ok", "vllm": "unavailable"}
    signed_in = browser.get("/healthz").json()
    assert "not reachable" in signed_in["detail"]


def test_a_site_that_dies_mid_answer_marks_it_interrupted_at_the_next_start(
    django_db_setup, fake_vllm_server, fake_vllm, alice
):
    fake_vllm.reply = ["half", " of", " it", " and", " more"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 3
    site = SiteProcess(site_env(fake_vllm_server, CHAT_CHECKPOINT_SECONDS="0")).start()
    try:
        with httpx.Client(base_url=site.url, timeout=10) as client:
            login(client, "alice", PASSWORD)
            sent = send(client, "Crash in the middle")
        answer = Message.objects.get(pk=sent.headers["X-Message-Id"])
        wait_for(lambda: Message.objects.get(pk=answer.pk).content == "half of it")
        site.kill()
        assert Message.objects.get(pk=answer.pk).status == Message.Status.STREAMING

        site = SiteProcess(site.env).start()
        answer.refresh_from_db()
        assert answer.status == Message.Status.INTERRUPTED
        assert answer.content == "half of it"
        assert answer.error
    finally:
        site.stop()
