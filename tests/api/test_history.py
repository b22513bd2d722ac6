"""The REST API's search, export and import: the page's results, a program's errors.

Through Django's test client with a bearer token (tests/api/test_history_live.py crosses daphne),
so that these also run on PostgreSQL (tests/chat/test_postgresql.py).
"""

import io
import json

import pytest
from django.test import Client, override_settings

from chat import exports, search
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(alice):
    conversation = Conversation.objects.create(owner=alice, title="세계 여행 <계획>")
    for n in range(3):
        Message.objects.create(conversation=conversation, role="user", content=f"전세계를 여행 {n}: <b>day</b> {n}")
    return conversation


def test_search_answers_what_the_page_shows(alice_client, alice, chat):
    response = alice_client.get("/api/search", {"q": "세계"})
    assert response.status_code == 200
    body = response.json()
    page = search.search(alice, "세계")
    assert body["terms"] == ["세계"]
    assert [hit["message_id"] for hit in body["messages"]] == [hit.message_id for hit in page.messages]
    newest = body["messages"][0]
    assert newest["url"] == f"/c/{chat.pk}/#message-{newest['message_id']}"
    assert newest["snippet"] == [
        {"text": "전", "match": False},
        {"text": "세계", "match": True},
        {"text": "를 여행 2: <b>day</b> 2", "match": False},  # text, for the program to escape as it shows it
    ]
    assert body["conversations"] == [
        {
            "conversation_id": chat.pk,
            "title": [{"text": "세계", "match": True}, {"text": " 여행 <계획>", "match": False}],
            "updated_at": body["conversations"][0]["updated_at"],
            "url": f"/c/{chat.pk}/",
        }
    ]
    assert body["next_before"] is None


def test_search_pages_through_older_messages(alice_client, chat):
    first = alice_client.get("/api/search", {"q": "여행", "limit": 2}).json()
    assert len(first["messages"]) == 2 and first["next_before"] == first["messages"][-1]["message_id"]
    rest = alice_client.get("/api/search", {"q": "여행", "limit": 2, "before": first["next_before"]}).json()
    assert len(rest["messages"]) == 1 and rest["conversations"] == [] and rest["next_before"] is None


def test_search_finds_only_the_callers_own(bob_client, chat):
    body = bob_client.get("/api/search", {"q": "세계"}).json()
    assert body["messages"] == [] and body["conversations"] == []


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ({}, 422, "q: Field required"),
        ({"q": "x" * 201}, 422, "q: String should have at most 200 characters"),
        ({"q": " ".join("abcdefghi")}, 422, "Search for at most 8 words at once."),
        ({"q": "x", "limit": 0}, 422, "limit: Input should be greater than or equal to 1"),
        ({"q": "x", "limit": 51}, 422, "limit: Input should be less than or equal to 50"),
        ({"q": "x", "before": 2**63}, 422, "before: Input should be less than or equal to"),
    ],
)
def test_search_explains_a_bad_request(alice_client, query, status, detail):
    response = alice_client.get("/api/search", query)
    assert response.status_code == status
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/search?q=x"),
        ("get", "/api/export"),
        ("get", "/api/conversations/1/export"),
        ("post", "/api/import"),
    ],
)
def test_every_route_needs_a_token_or_a_session(client: Client, method, url):
    assert getattr(client, method)(url).status_code == 401


def test_export_one_conversation_as_json_or_markdown(alice_client, chat):
    as_json = alice_client.get(f"/api/conversations/{chat.pk}/export")
    assert as_json.status_code == 200 and as_json["Content-Type"] == "application/json"
    assert [c["title"] for c in json.loads(as_json.content)["conversations"]] == ["세계 여행 <계획>"]
    as_markdown = alice_client.get(f"/api/conversations/{chat.pk}/export", {"format": "markdown"})
    assert as_markdown.content.decode() == exports.as_markdown(chat)
    assert as_markdown["Content-Disposition"].endswith(f"-{chat.pk}.md")
    assert alice_client.get(f"/api/conversations/{chat.pk}/export", {"format": "pdf"}).status_code == 422


def test_another_persons_conversation_is_not_exported(bob_client, chat):
    assert bob_client.get(f"/api/conversations/{chat.pk}/export").status_code == 404
    assert bob_client.get("/api/conversations/999999/export").status_code == 404


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_export_everything_then_import_it_elsewhere(alice_client, bob_client, bob, chat):
    export = b"".join(alice_client.get("/api/export"))
    assert [c["title"] for c in json.loads(export)["conversations"]] == ["세계 여행 <계획>"]
    response = bob_client.post("/api/import", {"file": named(export, "conversations.json")})
    assert response.status_code == 201, response.content
    body = response.json()
    imported = Conversation.objects.get(owner=bob)
    assert body == {
        "format": "chatsite",
        "messages": 3,
        "imported": [{"id": imported.pk, "title": "세계 여행 <계획>", "messages": 3, "left_out": {}}],
        "refused": [],
        "summary": "Imported 1 conversation(s) with 3 message(s).",
    }


def named(data: bytes, name: str) -> io.BytesIO:
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def test_a_refused_import_lists_every_problem_and_imports_nothing(bob_client):
    export = {
        "format": "chatsite.conversations",
        "version": 1,
        "conversations": [
            {"title": "ok", "messages": [{"role": "user", "content": "hi"}]},
            {"top_p": 0, "messages": [{"role": "user"}]},
        ],
    }
    response = bob_client.post("/api/import", {"file": named(json.dumps(export).encode(), "x.json")})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("Nothing was imported: conversations[1].top_p: Top p must be between 0.01 and 1.")
    assert [(e["loc"], e["msg"]) for e in body["errors"]] == [
        (["file", "conversations", 1, "top_p"], "Top p must be between 0.01 and 1."),
        (["file", "conversations", 1, "messages", 0, "content"], "Field required"),
    ]
    assert not Conversation.objects.exists()


def test_an_import_needs_a_file(bob_client):
    response = bob_client.post("/api/import", {})
    assert response.status_code == 422 and "file" in response.json()["detail"]


@override_settings(API_MAX_BODY_BYTES=1000, CHAT_IMPORT_MAX_BYTES=100_000)
def test_an_import_may_be_larger_than_other_requests_up_to_its_own_limit(bob_client):
    conversation = {"title": "long", "messages": [{"role": "user", "content": "x" * 50_000}]}
    export = {"format": "chatsite.conversations", "version": 1, "conversations": [conversation]}
    response = bob_client.post("/api/import", {"file": named(json.dumps(export).encode(), "x.json")})
    assert response.status_code == 201
    too_large = bob_client.post("/api/import", {"file": named(b" " * 300_000, "x.json")})
    assert too_large.status_code == 413  # refused by the declared length, unread
    assert too_large.json()["detail"] == "The request body is too large: at most 165536 bytes are accepted."
    just_over = bob_client.post("/api/import", {"file": named(b" " * 100_001, "x.json")})
    assert just_over.status_code == 413  # within the envelope, measured by the import
    assert just_over.json()["detail"] == "The file is larger than the 100,000 bytes an import may be."
    # Every other route keeps the API's own limit.
    assert bob_client.post("/api/conversations", "x" * 2000, content_type="application/json").status_code == 413


def test_importing_with_the_browsers_session_needs_the_csrf_token(bob):
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = client.post("/api/import", {"file": named(b"[]", "x.json")})
    assert response.status_code == 403


def test_a_body_that_is_not_multipart_is_a_client_error(alice_client):
    response = alice_client.generic(
        "POST", "/api/import", b"--abc--\r\n", content_type="multipart/form-data; boundary=abc"
    )
    assert response.status_code in (400, 422)
    assert response.json()["detail"]
    broken = alice_client.generic("POST", "/api/import", b"x", content_type="multipart/form-data")  # no boundary
    assert broken.status_code == 400
    assert broken.json()["detail"].startswith("The upload cannot be read:")
