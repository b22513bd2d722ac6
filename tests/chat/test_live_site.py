"""The site in its own daphne process, over real sockets, against the fake vLLM on loopback."""

import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from bench import servers
from chat import turns
from chat.models import Conversation, Message
from tests.accounts import login
from tests.chat.page_html import elements
from tests.site_server import SiteProcess, csrf_headers, site_env
from tests.sse import sse_events, sse_events_with_ids
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(live_site, alice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_site.url, timeout=10) as client:
        login(client, "alice")
        yield client


def send(client: httpx.Client, prompt: str, url: str = "/c/new/send", **fields) -> httpx.Response:
    """Send a prompt as the page's htmx form does."""
    response = client.post(
        url, data={"prompt": prompt, **fields}, headers={**csrf_headers(client), "HX-Request": "true"}
    )
    assert response.status_code == 200, response.text
    return response


# The answer in a sent turn, which the page's script follows at its stream URL.
STREAMING_ANSWER = re.compile(r'data-stream-url="(/c/\d+/m/(\d+)/stream)"')
# An answer that had ended before the page rendered its turn (the fake answers at once, and an
# error at once) comes without one; its stream gives it whole.
ANSWER = re.compile(r'<article class="message assistant \w+" id="message-(\d+)"')


def answer_pk(sent: httpx.Response) -> int:
    if streaming := STREAMING_ANSWER.search(sent.text):
        return int(streaming[2])
    ended = ANSWER.search(sent.text)
    assert ended is not None, sent.text
    return int(ended[1])


def stream_url(sent: httpx.Response) -> str:
    if streaming := STREAMING_ANSWER.search(sent.text):
        return streaming[1]
    answer = Message.objects.get(pk=answer_pk(sent))
    return f"/c/{answer.conversation_id}/m/{answer.pk}/stream"


def test_a_prompt_streams_to_the_browser_and_is_found_again(browser, fake_vllm):
    fake_vllm.reply = ["Local", " AI", " keeps", " <b>your</b>", " data."]
    sent = send(browser, "Explain the benefits of local AI models", temperature="0.3", max_tokens="64")
    assert "Explain the benefits of local AI models" in sent.text

    with browser.stream("GET", stream_url(sent)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = list(sse_events(response.iter_lines()))

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

    page = browser.get(sent.headers["HX-Push-Url"])
    assert "Local AI keeps &lt;b&gt;your&lt;/b&gt; data." in page.text
    assert Message.objects.get(pk=done["message_id"]).status == Message.Status.COMPLETE


def test_a_first_prompt_brings_its_turn_a_form_for_the_next_and_the_conversations_address(browser, fake_vllm):
    # Held before its last word: still streaming when the turn is rendered, so it says where to follow it.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 1
    sent = send(browser, "Plan a trip", temperature="0.3", top_p="0.5", max_tokens="64")
    conversation = Conversation.objects.get()
    address = f"/c/{conversation.pk}/"
    assert sent.headers["HX-Push-Url"] == address
    found = elements(sent.text)
    assert found[f"message-{answer_pk(sent)}"]["data-stream-url"] == stream_url(sent)
    assert "Plan a trip" in sent.text
    # Swapped in beside the turn: a form that sends the next prompt to this conversation, with its
    # settings, and the list of conversations with this one current.
    form = found["prompt-form"]
    assert form["hx-swap-oob"] == "true"
    assert form["hx-post"] == form["action"] == f"{address}send"
    assert [found[name]["value"] for name in ("temperature", "top_p", "max_tokens")] == ["0.3", "0.5", "64"]
    assert found["prompt"]["<tag>"] == "textarea"
    assert found["conversations"]["hx-swap-oob"] == "true"
    assert found[f"conversation-{conversation.pk}"]["class"] == "current"
    fake_vllm.delta_gate.set()
    with browser.stream("GET", stream_url(sent)) as response:
        assert list(sse_events(response.iter_lines()))[-1][0] == "done"


def test_a_prompt_in_a_conversation_refreshes_the_list_without_the_conversation(browser, alice, fake_vllm):
    trip = Conversation.objects.create(owner=alice, title="Trip")
    Message.objects.create(conversation=trip, role="user", content="An earlier question")
    Message.objects.create(conversation=trip, role="assistant", content="An earlier answer")
    taxes = Conversation.objects.create(owner=alice, title="Taxes")
    sent = send(browser, "And now?", url=f"/c/{trip.pk}/send")
    assert "HX-Push-Url" not in sent.headers  # the page is at its address already
    assert "And now?" in sent.text
    assert "An earlier question" not in sent.text and "An earlier answer" not in sent.text
    # The conversation moves to the top of the list, still the current one.
    assert re.findall(r'<li id="conversation-(\d+)"', sent.text) == [str(trip.pk), str(taxes.pk)]
    assert elements(sent.text)[f"conversation-{trip.pk}"]["class"] == "current"
    with browser.stream("GET", stream_url(sent)) as response:
        assert list(sse_events(response.iter_lines()))[-1][0] == "done"


def test_without_script_a_prompt_leads_to_its_conversation(browser, fake_vllm):
    response = browser.post("/c/new/send", data={"prompt": "No script here"}, headers=csrf_headers(browser))
    conversation = Conversation.objects.get()
    assert response.status_code == 302
    assert response.headers["Location"] == f"/c/{conversation.pk}/"
    assert "No script here" in browser.get(response.headers["Location"]).text
    answer = conversation.messages.get(role="assistant")
    with browser.stream("GET", f"/c/{conversation.pk}/m/{answer.pk}/stream") as response:
        assert list(sse_events(response.iter_lines()))[-1][0] == "done"


def test_stop_ends_the_answer_and_vllm_sees_the_request_closed(browser, fake_vllm):
    fake_vllm.reply = [f" word{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    sent = send(browser, "Talk forever")
    stop_url = stream_url(sent).replace("/stream", "/stop")

    with browser.stream("GET", stream_url(sent)) as response:
        events = sse_events(response.iter_lines())
        assert next(events)[0] == "delta"
        stopped = browser.post(stop_url, headers=csrf_headers(browser)).json()
        rest = list(events)

    assert stopped["status"] == "stopped"
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "stopped"
    assert fake_vllm.wait_for_disconnect()
    stored = Message.objects.get(pk=stopped["message_id"])
    assert stored.status == Message.Status.STOPPED
    assert stored.content and stored.content == stopped["content"]


def test_an_answer_outlives_the_browser_and_can_be_followed_live_again(browser, fake_vllm):
    fake_vllm.reply = [f" t{i}" for i in range(60)]
    fake_vllm.token_delay = 0.03
    sent = send(browser, "Keep going without me")

    with browser.stream("GET", stream_url(sent)) as response:
        events = sse_events(response.iter_lines())
        seen = "".join(next(events)[1]["text"] for _ in range(5))
    # The tab is closed. Reopening the conversation follows the answer still growing.
    page = browser.get(sent.headers["HX-Push-Url"])
    assert 'data-stream-url="' in page.text
    with browser.stream("GET", stream_url(sent)) as response:
        reopened = list(sse_events(response.iter_lines()))
    assert reopened[0][1]["text"].startswith(seen)  # it begins with the text so far, in one delta
    text = "".join(data["text"] for name, data in reopened if name == "delta")
    assert text == "".join(fake_vllm.reply)
    assert reopened[-1][1]["status"] == "complete"
    assert fake_vllm.disconnects() == 0
    assert Message.objects.get(pk=answer_pk(sent)).content == text


def test_a_stream_resumed_from_last_event_id_where_its_answer_is_generated_has_no_gap_and_no_duplicate(
    browser, fake_vllm
):
    # Both streams follow the answer in the worker that generates it (RunningTurn.events).
    fake_vllm.reply = [f" r{i}" for i in range(80)]
    fake_vllm.token_delay = 0.02
    sent = send(browser, "Resume me")

    before, last_id = "", ""
    with browser.stream("GET", stream_url(sent)) as response:
        for name, data, event_id in sse_events_with_ids(response.iter_lines()):
            assert name == "delta"
            before += data["text"]
            last_id = event_id
            assert last_id == str(len(before))
            if len(before) > 40:
                break  # the connection drops
    after, ended = "", None
    with browser.stream("GET", stream_url(sent), headers={"Last-Event-ID": last_id}) as response:
        for name, data, event_id in sse_events_with_ids(response.iter_lines()):
            if name == "delta":
                after += data["text"]
                assert event_id == str(len(before + after))
            else:
                ended = data

    assert before + after == "".join(fake_vllm.reply)
    assert ended is not None and ended["status"] == "complete"


def test_a_vllm_failure_is_shown_and_stored(browser, fake_vllm):
    fake_vllm.fault = "server_error"
    sent = send(browser, "Break please")
    with browser.stream("GET", stream_url(sent)) as response:
        events = list(sse_events(response.iter_lines()))

    assert events[-1][0] == "error"
    assert "The model server failed (500)" in events[-1][1]["message"]
    stored = Message.objects.get(pk=answer_pk(sent))
    assert stored.status == Message.Status.ERROR
    assert stored.error == events[-1][1]["message"]
    page = browser.get(sent.headers["HX-Push-Url"])
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


def test_a_site_that_dies_mid_answer_has_it_marked_interrupted_once_its_lease_expires(
    django_db_setup, fake_vllm_server, fake_vllm, alice
):
    fake_vllm.reply = ["half", " of", " it", " and", " more"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 3
    env = site_env(fake_vllm_server, CHAT_CHECKPOINT_SECONDS="0", CHAT_LEASE_SECONDS="1")
    site = SiteProcess(env).start()
    try:
        with httpx.Client(base_url=site.url, timeout=10) as client:
            login(client, "alice")
            sent = send(client, "Crash in the middle")
        answer = Message.objects.get(pk=answer_pk(sent))
        wait_for(lambda: Message.objects.get(pk=answer.pk).content == "half of it")
        site.kill()
        assert Message.objects.get(pk=answer.pk).status == Message.Status.STREAMING

        # The next site marks it, without being asked: its workers sweep for expired leases.
        site = SiteProcess(site.env).start()
        wait_for(lambda: Message.objects.get(pk=answer.pk).status == Message.Status.INTERRUPTED, within=10)
        answer.refresh_from_db()
        assert answer.content == "half of it"
        assert answer.error == turns.INTERRUPTED_TEXT
    finally:
        site.stop()


# --- The same site on the other ASGI servers bench.run compares with daphne (issue 22) -----------

# daphne serves every test above; each other server serves the site's own code unchanged.
OTHER_SERVERS = [server for server in servers.SERVERS if server != "daphne"]


@pytest.fixture(scope="module", params=OTHER_SERVERS)
def site_on_server(request, django_db_setup, django_db_blocker, fake_vllm_server) -> Iterator[SiteProcess]:
    site = SiteProcess(site_env(fake_vllm_server), server=request.param).start()
    yield site
    site.stop()


@pytest.fixture
def browser_on_server(site_on_server, alice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site_on_server.url, timeout=10) as client:
        login(client, "alice")  # the sign-in's form, its CSRF cookie and its POST
        yield client


def test_on_each_server_the_chat_page_loads_signed_in(browser_on_server, fake_vllm):
    page = browser_on_server.get("/")
    assert page.status_code == 200
    assert elements(page.text)["prompt"]["<tag>"] == "textarea"


def test_on_each_server_an_answer_streams_and_is_stored(browser_on_server, fake_vllm):
    fake_vllm.reply = ["Local", " AI", " keeps", " <b>your</b>", " data."]
    sent = send(browser_on_server, "Explain the benefits of local AI models")
    with browser_on_server.stream("GET", stream_url(sent)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))

    assert "".join(data["text"] for name, data in events if name == "delta") == "Local AI keeps <b>your</b> data."
    assert events[-1][0] == "done" and events[-1][1]["status"] == "complete"
    assert Message.objects.get(pk=events[-1][1]["message_id"]).content == "Local AI keeps <b>your</b> data."


def test_on_each_server_stop_ends_a_streaming_answer(browser_on_server, fake_vllm):
    # 500 tokens at 50 a second: a server that held the stream back until its end would show the
    # first delta only after 10 s, with the answer complete rather than stopped.
    fake_vllm.reply = [f" word{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    sent = send(browser_on_server, "Talk forever")
    with browser_on_server.stream("GET", stream_url(sent)) as response:
        events = sse_events(response.iter_lines())
        assert next(events)[0] == "delta"
        stopped = browser_on_server.post(
            stream_url(sent).replace("/stream", "/stop"), headers=csrf_headers(browser_on_server)
        )
        rest = list(events)

    assert stopped.json()["status"] == "stopped"
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "stopped"
    assert fake_vllm.wait_for_disconnect()
    assert Message.objects.get(pk=answer_pk(sent)).status == Message.Status.STOPPED
