"""chat/temporary.py: a temporary chat's answer streams from the engine and nothing is stored.

Against the live site and the fake vLLM (the answer crosses real sockets); the limits and the
history's rules in-process. The page in Chromium is in tests/chat/test_browser_temporary.py.
"""

import json

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from chat import limits, temporary
from chat.limits import TooManyAnswers
from chat.models import Conversation, Message
from tests.accounts import login
from tests.site_server import SiteProcess, csrf_headers, site_env
from tests.sse import sse_events
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SEND = "/temporary/send"


def nothing_stored() -> bool:
    return not Conversation.objects.exists() and not Message.objects.exists()


@pytest.fixture
def alices(live_site, alice):
    with httpx.Client(base_url=live_site.url, timeout=30) as client:
        login(client, "alice")
        yield client


def test_the_answer_streams_as_the_chat_pages_do_and_nothing_is_stored(alices, fake_vllm):
    fake_vllm.reply = ["Blue", " light", " scatters."]
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    data = {"prompt": "Why is the sky blue?", "history": json.dumps(history)}
    with alices.stream("POST", SEND, data=data, headers=csrf_headers(alices)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    assert "".join(data["text"] for name, data in events if name == "delta") == "Blue light scatters."
    name, end = events[-1]
    assert (name, end["status"]) == ("done", "complete")
    assert "message_id" not in end  # there is no message
    # The model saw the page's history, then the prompt.
    assert fake_vllm.requests[-1]["messages"][-3:] == [*history, {"role": "user", "content": "Why is the sky blue?"}]
    assert nothing_stored()
    # Nor is anything in the person's search or export.
    assert "Nothing found" in alices.get("/search", params={"q": "scatters"}).text
    assert "scatters" not in alices.get("/export.json").text


@pytest.fixture
def site_of_one_answer_at_once(django_db_setup, fake_vllm_server):
    """The site in a process of its own, where a person may have one answer at once."""
    site = SiteProcess(site_env(fake_vllm_server, CHAT_MAX_ANSWERS_AT_ONCE="1")).start()
    yield site
    site.stop()


def test_leaving_a_temporary_answer_ends_its_generation_and_gives_its_room_back(
    site_of_one_answer_at_once, alice, fake_vllm
):
    fake_vllm.reply, fake_vllm.fault, fake_vllm.fault_after = ["One", " two"], "stall", 1
    with httpx.Client(base_url=site_of_one_answer_at_once.url, timeout=30) as alices:
        login(alices, "alice")
        for _ in range(3):
            with alices.stream("POST", SEND, data={"prompt": "Count"}, headers=csrf_headers(alices)) as response:
                assert response.status_code == 200
                events = sse_events(response.iter_lines())  # kept: dropped, it would close the response
                assert next(events) == ("delta", {"text": "One"})
                wait_for(lambda: fake_vllm.running == 1, what="the engine to be generating")
                # One at once: a second, while this one streams, is refused before anything streams.
                refused = alices.post(SEND, data={"prompt": "Another"}, headers=csrf_headers(alices))
                assert refused.status_code == 429
                assert "1 answer being generated" in refused.json()["error"]
            # The client has gone: the site hangs up on the engine (which frees vLLM's slot), and
            # the room is given back, so the next one is let through.
            wait_for(lambda: fake_vllm.running == 0, what="the engine's request to be closed")
    assert nothing_stored()


def test_a_failing_engine_is_an_error_event_and_still_nothing_is_stored(alices, fake_vllm):
    fake_vllm.fault = "server_error"
    with alices.stream("POST", SEND, data={"prompt": "Hi"}, headers=csrf_headers(alices)) as response:
        assert response.status_code == 200
        events = list(sse_events(response.iter_lines()))
    name, end = events[-1]
    assert (name, end["status"]) == ("error", "error")
    assert end["message"]
    assert nothing_stored()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"prompt": ""}, "Type a message first."),
        ({"prompt": "hi", "history": "not json"}, "not valid JSON"),
        ({"prompt": "hi", "history": "[" * 100_000}, "not valid JSON"),  # nested too deep to read
        ({"prompt": "hi", "history": '{"role": "user"}'}, "a list of at most"),
        ({"prompt": "hi", "history": json.dumps([{"role": "assistant", "content": "x"}])}, "in turn"),
        ({"prompt": "hi", "history": json.dumps([{"role": "system", "content": "x"}])}, "in turn"),
        ({"prompt": "hi", "history": json.dumps([{"role": "user", "content": 5}])}, "in turn"),
        ({"prompt": "hi", "history": json.dumps([{"role": "user", "content": "a\x00b"}])}, "Null characters"),
        ({"prompt": "hi", "history": json.dumps([{"role": "user", "content": "x"}] * 201)}, "at most 200"),
        ({"prompt": "hi", "temperature": "9"}, "Temperature must be between"),
        ({"prompt": "hi", "model": "no-such-model"}, "does not exist here"),
    ],
)
def test_bad_input_is_a_clear_400_before_anything_streams(client, alice, fake_vllm, data, error):
    client.force_login(alice)
    response = client.post(reverse("chat:temporary-send"), data)
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert not fake_vllm.requests
    assert nothing_stored()


def test_a_temporary_chat_needs_a_session_and_the_csrf_token(alice):
    signed_out = Client().post(reverse("chat:temporary-send"), {"prompt": "hi"})
    assert signed_out.status_code == 302
    assert Client().get(reverse("chat:temporary")).status_code == 302
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("chat:temporary-send"), {"prompt": "hi"}).status_code == 403
    assert client.get(reverse("chat:temporary-send")).status_code == 405


def test_temporary_answers_count_against_the_persons_limits(alice, settings):
    settings.CHAT_MAX_ANSWERS_AT_ONCE, settings.CHAT_MAX_ANSWERS_PER_MINUTE = 2, 3
    settings.CHAT_LIMITS_EXEMPT_SUPERUSERS = False
    reserve = async_to_sync(temporary.reserve)
    first, second = reserve(alice.pk), reserve(alice.pk)
    with pytest.raises(TooManyAnswers, match="2 answers being generated"):
        reserve(alice.pk)
    first.release()
    first.release()  # given back once, however often it is called
    third = reserve(alice.pk)
    second.release()
    third.release()
    # Three started in the last minute: the fourth waits, however few stream now.
    with pytest.raises(TooManyAnswers, match="3 answers in the last minute") as refused:
        reserve(alice.pk)
    assert 1 <= refused.value.retry_after <= 60
    temporary._started.clear()


def test_a_temporary_answer_counts_against_a_stored_answers_start_and_the_other_way_round(alice, settings):
    settings.CHAT_MAX_ANSWERS_AT_ONCE, settings.CHAT_MAX_ANSWERS_PER_MINUTE = 1, 0
    settings.CHAT_LIMITS_EXEMPT_SUPERUSERS = False
    reserved = async_to_sync(temporary.reserve)(alice.pk)
    try:
        # A stored answer's start (every door's, chat/turns.py) counts the temporary one streaming.
        with pytest.raises(TooManyAnswers, match="1 answer being generated"):
            limits.check_room_for_an_answer(alice.pk)
    finally:
        reserved.release()
    limits.check_room_for_an_answer(alice.pk)  # room again once it has ended
    conversation = Conversation.objects.create(owner=alice)
    Message.objects.create(conversation=conversation, role="assistant", status="streaming", worker="w1")
    with pytest.raises(TooManyAnswers, match="1 answer being generated"):
        async_to_sync(temporary.reserve)(alice.pk)
    temporary._started.clear()


def test_the_temporary_chat_page_says_what_is_not_saved_before_the_first_message(client, alice):
    client.force_login(alice)
    page = client.get(reverse("chat:temporary")).content.decode()
    assert "Not saved." in page
    assert page.index("Not saved.") < page.index('id="thread"') < page.index('id="prompt"')
