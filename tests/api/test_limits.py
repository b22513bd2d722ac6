"""Every door, the page's included, refuses an answer over the person's limits: 429 with Retry-After
in its own error shape, and nothing saved. Against sites in daphne processes of their own, with
limits set in their environment, as an operator sets them.
"""

import concurrent.futures
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone

from chat.models import Conversation, Message
from tests.accounts import login
from tests.commands import ManageCommand
from tests.site_server import SiteProcess, csrf_headers, site_env

pytestmark = pytest.mark.django_db(transaction=True)

LIMITS = {"CHAT_MAX_ANSWERS_AT_ONCE": "1", "CHAT_MAX_ANSWERS_PER_MINUTE": "3"}
AT_ONCE = (
    "You already have 1 answer being generated, the most at once. "
    "Send this when one of them has finished (or stop one)."
)
PROMPT = "Explain the benefits of local AI models"


@pytest.fixture(scope="module")
def limited_site(django_db_setup, django_db_blocker, fake_vllm_server) -> Iterator[SiteProcess]:
    site = SiteProcess(site_env(fake_vllm_server, **LIMITS)).start()
    yield site
    site.stop()


@pytest.fixture
def alice_answering(alice) -> Message:
    """An answer of Alice's being generated, as another worker of the site would be generating it."""
    conversation = Conversation.objects.create(owner=alice, title="Elsewhere")
    # With a live lease: one with none (or an expired one) is a dead worker's, which any worker
    # that notices marks interrupted, and which then counts no more.
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        status=Message.Status.STREAMING,
        worker="another-worker",
        lease_until=timezone.now() + timedelta(hours=1),
    )


def every_door(site: SiteProcess, token: str) -> dict[str, httpx.Response]:
    """Alice sends a prompt by each door once."""
    conversation = Conversation.objects.get(title="Elsewhere")
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=site.url, timeout=15) as client:
        login(client, "alice")
        return {
            "page": client.post("/c/new/send", data={"prompt": PROMPT}, headers=csrf_headers(client)),
            "rest": client.post(
                f"/api/conversations/{conversation.pk}/messages", json={"prompt": PROMPT}, headers=bearer
            ),
            "workflows": client.post("/api/workflows/runs", json={"input": {"prompt": PROMPT}}, headers=bearer),
            "v1": client.post(
                "/v1/chat/completions",
                json={"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": PROMPT}]},
                headers=bearer,
            ),
        }


def test_every_door_refuses_a_second_answer_at_once_in_its_own_shape(
    limited_site, alice_answering, alice_token, fake_vllm
):
    before = list(Message.objects.values_list("pk", flat=True))

    refused = every_door(limited_site, alice_token)

    assert {door: response.status_code for door, response in refused.items()} == dict.fromkeys(refused, 429)
    assert {door: response.headers.get("Retry-After") for door, response in refused.items()} == dict.fromkeys(
        refused, "5"
    )
    assert refused["page"].json() == {"error": AT_ONCE}  # the page shows `error` under the prompt box
    assert refused["rest"].json() == {"detail": AT_ONCE}
    assert refused["workflows"].json() == {"detail": AT_ONCE}
    assert refused["v1"].json() == {
        "error": {"message": AT_ONCE, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    assert list(Message.objects.values_list("pk", flat=True)) == before
    assert list(Conversation.objects.values_list("title", flat=True)) == ["Elsewhere"]
    assert fake_vllm.requests == []


def test_every_door_refuses_a_fourth_answer_in_a_minute_and_says_when_to_try_again(
    limited_site, alice, alice_token, fake_vllm
):
    conversation = Conversation.objects.create(owner=alice, title="Elsewhere")
    for _ in range(3):  # answered by another worker of the site, as it names on them
        Message.objects.create(conversation=conversation, role="assistant", content="Done.", worker="another-worker")

    refused = every_door(limited_site, alice_token)

    for door, response in refused.items():
        assert response.status_code == 429, door
        wait = int(response.headers["Retry-After"])
        assert 55 <= wait <= 60, door
        body = response.json()
        message = body.get("detail") or body["error"]
        message = message["message"] if isinstance(message, dict) else message
        assert message == (
            f"You have started 3 answers in the last minute, the most allowed. Try again in {wait} seconds."
        ), door
    assert Message.objects.count() == 3


def test_the_openai_sdk_raises_its_rate_limit_error(limited_site, alice_answering, alice_token, fake_vllm):
    client = openai.OpenAI(base_url=f"{limited_site.url}/v1", api_key=alice_token, max_retries=0, timeout=15)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="qwen2-7b-instruct", messages=[{"role": "user", "content": "Hi"}])

    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["Retry-After"] == "5"


def test_another_person_is_not_held_back(limited_site, alice_answering, bob_token, fake_vllm):
    with httpx.Client(base_url=limited_site.url, timeout=15) as client:
        response = client.post(
            "/api/workflows/runs", json={"input": {"prompt": "Hi"}}, headers={"Authorization": f"Bearer {bob_token}"}
        )
    assert response.status_code == 200
    frames = response.text.split("\n\n")
    assert "".join(frame.removeprefix("data: ") for frame in frames[:-1]) == "".join(fake_vllm.reply)


def test_the_run_command_refuses_too(alice_answering, fake_vllm_server):
    run = ManageCommand(
        "run",
        "--input",
        '{"prompt": "Hi"}',
        "--user",
        "alice",
        env={**os.environ, **site_env(fake_vllm_server, **LIMITS)},
    )
    assert run.finish() == 1
    assert run.output == f"CommandError: {AT_ONCE}"
    assert Message.objects.count() == 1


def test_two_workers_together_start_no_more_than_the_limit(fake_vllm_server, fake_vllm, alice, alice_token):
    """The same person, many prompts at the same moment, half to each of two site processes."""
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    workers = [SiteProcess(site_env(fake_vllm_server, **LIMITS)).start() for _ in range(2)]
    try:

        def send(n: int) -> int:
            site = workers[n % 2]
            response = httpx.post(
                f"{site.url}/api/workflows/runs",
                json={"input": {"prompt": f"Prompt {n}"}, "wait_for_completion": False},
                headers={"Authorization": f"Bearer {alice_token}"},
                timeout=30,
            )
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(send, range(8)))

        assert statuses == [200] + [429] * 7
        assert Message.objects.filter(role="assistant").count() == 1
        assert Conversation.objects.count() == 1
    finally:
        fake_vllm.reset()  # ends the stalled answer
        for worker in workers:
            worker.stop()


def test_answers_started_a_minute_ago_no_longer_count(limited_site, alice, alice_token, fake_vllm):
    conversation = Conversation.objects.create(owner=alice)
    for _ in range(3):  # answered by another worker of the site, as it names on them
        Message.objects.create(conversation=conversation, role="assistant", content="Done.", worker="another-worker")
    Message.objects.update(created_at=timezone.now() - timedelta(seconds=61))

    response = httpx.post(
        f"{limited_site.url}/api/conversations/{conversation.pk}/messages",
        json={"prompt": "Hi"},
        headers={"Authorization": f"Bearer {alice_token}"},
        timeout=15,
    )

    assert response.status_code == 200, response.text


def test_an_sdk_sessions_call_refused_continues_its_conversation_when_sent_again(
    limited_site, alice, alice_token, fake_vllm
):
    client = openai.OpenAI(base_url=f"{limited_site.url}/v1", api_key=alice_token, max_retries=0, timeout=15)
    history: list[Any] = [{"role": "user", "content": "First?"}]
    answer = client.chat.completions.create(model="qwen2-7b-instruct", messages=history)
    history += [
        {"role": "assistant", "content": answer.choices[0].message.content},
        {"role": "user", "content": "Second?"},
    ]
    elsewhere = Message.objects.create(
        conversation=Conversation.objects.create(owner=alice, title="Elsewhere"),
        role="assistant",
        status=Message.Status.STREAMING,
        worker="another-worker",
        lease_until=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="qwen2-7b-instruct", messages=history)
    elsewhere.conversation.delete()

    client.chat.completions.create(model="qwen2-7b-instruct", messages=history)  # the SDK's retry

    conversation = Conversation.objects.get(owner=alice)
    assert conversation.messages.count() == 4
