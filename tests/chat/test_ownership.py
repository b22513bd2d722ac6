"""chat/ownership.py: an answer being generated is followed, read or stopped by its owner alone, on
every door that offers one (the page's stream, the REST API's, model-compose's tasks), whatever
conversation the URL names; /v1 streams only the answer its own request started, and continues
only its caller's conversations (tests/api/test_openai_compat.py). Against the live site.
"""

import httpx
import pytest

from chat.models import Conversation, Message
from tests.accounts import login
from tests.site_server import csrf_headers
from tests.sse import sse_events
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Alice's secret"


def test_a_live_answer_is_offered_to_no_one_but_its_owner_on_any_door(
    live_site, alice_api, alice, bob, bob_token, fake_vllm
):
    # Alice's answer streams, and stays streaming (its first delta given) until she stops it.
    fake_vllm.reply, fake_vllm.fault, fake_vllm.fault_after = [SECRET, " plans."], "stall", 1
    started = alice_api.post("/workflows/runs", json={"input": {"prompt": "Hi"}, "wait_for_completion": False})
    answer = Message.objects.get(pk=int(started.json()["task_id"]))
    alices, mine = answer.conversation_id, Conversation.objects.create(owner=bob).pk
    wait_for(lambda: fake_vllm.requests, what="the answer to start")

    with (
        httpx.Client(base_url=live_site.url, timeout=15) as page,
        httpx.Client(base_url=live_site.url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=15) as token,
    ):
        login(page, "bob")
        probes = (
            [(page, "GET", f"/c/{conversation}/m/{answer.pk}/stream") for conversation in (alices, mine)]
            + [(page, "POST", f"/c/{conversation}/m/{answer.pk}/stop") for conversation in (alices, mine)]
            + [(page, "POST", f"/c/{conversation}/m/{answer.pk}/feedback") for conversation in (alices, mine)]
        )
        for client in (token, page):  # the REST API takes a token or the browser's session
            for conversation in (alices, mine):
                probes += [
                    (client, "GET", f"/api/conversations/{conversation}/messages/{answer.pk}/stream"),
                    (client, "POST", f"/api/conversations/{conversation}/messages/{answer.pk}/stop"),
                    (client, "GET", f"/api/conversations/{conversation}/messages/{answer.pk}/feedback"),
                    (client, "PUT", f"/api/conversations/{conversation}/messages/{answer.pk}/feedback"),
                ]
            probes += [
                (client, "GET", f"/api/tasks/{answer.pk}"),
                (client, "GET", f"/api/tasks/{answer.pk}?output_only=true"),
                (client, "POST", f"/api/tasks/{answer.pk}/cancel"),
            ]
        for client, method, url in probes:
            # Streamed: a stream wrongly offered is refused here, not read until it times out.
            headers = csrf_headers(page) if client is page else {}
            body = {"rating": "up"} if method == "PUT" else None  # a valid body: the 404 comes from the id
            with client.stream(method, url, headers=headers, json=body) as response:
                assert response.status_code == 404, (method, url, response.status_code)
                assert SECRET not in response.read().decode(), url

    # Still streaming: no stop of Bob's reached it. Alice follows it and stops it.
    assert Message.objects.get(pk=answer.pk).status == Message.Status.STREAMING
    with alice_api.stream("GET", f"/conversations/{alices}/messages/{answer.pk}/stream") as followed:
        assert followed.status_code == 200
        first = next(data for name, data in sse_events(followed.iter_lines()) if name == "delta")
    assert first["text"] == SECRET
    assert alice_api.post(f"/tasks/{answer.pk}/cancel").json()["status"] == "cancelled"
    assert Message.objects.get(pk=answer.pk).status == Message.Status.STOPPED
