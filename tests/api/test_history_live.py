"""Export and import over real sockets: the whole history streams out of daphne as it is read,
and an upload larger than any other API request goes in."""

import json

import httpx
import pytest

from chat import exports
from chat.models import Conversation, Message
from tests.accounts import login

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def history(alice):
    for n in range(30):
        conversation = Conversation.objects.create(owner=alice, title=f"대화 {n}")
        Message.objects.bulk_create(
            Message(conversation=conversation, role=role, content=f"{role} {n}: " + "긴 답변 " * 200)
            for role in ("user", "assistant")
        )


def test_the_whole_history_streams_and_comes_back_in(history, alice, bob, alice_api, bob_api):
    with alice_api.stream("GET", "/export") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert "Content-Length" not in response.headers  # sent as it is read, not built first
        pieces = list(response.iter_raw())
    assert len(pieces) > 1
    export = b"".join(pieces)
    assert json.loads(export)["conversations"][0]["title"] == "대화 29"

    response = bob_api.post("/import", files={"file": ("conversations.json", export, "application/json")})
    assert response.status_code == 201, response.text
    assert response.json()["messages"] == 60
    mine = json.loads(exports.as_json(Conversation.objects.owned_by(bob)))
    assert [c["title"] for c in mine["conversations"]] == [f"대화 {n}" for n in reversed(range(30))]


def test_the_page_exports_the_whole_history_too(history, live_site, alice):
    with httpx.Client(base_url=live_site.url, timeout=15) as client:
        login(client, "alice")
        response = client.get("/export.json")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith('attachment; filename="conversations-')
    assert len(json.loads(response.content)["conversations"]) == 30
