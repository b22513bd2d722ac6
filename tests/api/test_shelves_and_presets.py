"""The REST API's folders, pins, archive and presets: the page's rules, a program's errors, and
another person's folder, conversation or own preset a 404 on every route.

Through Django's test client with a bearer token, as tests/api/test_history.py.
"""

import pytest
from django.test import Client

from chat import folders
from chat.models import Conversation, Folder, Preset

pytestmark = pytest.mark.django_db


def patch(client: Client, url: str, body: object):
    return client.patch(url, body, content_type="application/json")


def post(client: Client, url: str, body: object):
    return client.post(url, body, content_type="application/json")


def listed(client: Client, **query: str) -> list[str]:
    response = client.get("/api/conversations", query)
    assert response.status_code == 200, response.content
    return [item["title"] for item in response.json()["items"]]


def test_folders_pins_and_the_archive_through_the_api(alice_client, alice):
    made = post(alice_client, "/api/folders", {"name": "  Work  "})
    assert made.status_code == 201
    work = made.json()
    assert work["name"] == "Work"
    assert alice_client.get("/api/folders").json() == [work]
    a, b, c = (Conversation.objects.create(owner=alice, title=t) for t in "ABC")

    filed = patch(alice_client, f"/api/conversations/{a.pk}", {"folder_id": work["id"]})
    assert filed.status_code == 200
    assert (filed.json()["folder_id"], filed.json()["pinned"], filed.json()["archived_at"]) == (work["id"], False, None)
    assert patch(alice_client, f"/api/conversations/{b.pk}", {"pinned": True}).json()["pinned"] is True
    archived = patch(alice_client, f"/api/conversations/{c.pk}", {"archived": True}).json()
    assert archived["archived_at"] is not None
    # Filing, pinning and archiving are no activity: the order stays the conversations' own.
    assert listed(alice_client) == ["B", "A"]
    assert listed(alice_client, folder_id=str(work["id"])) == ["A"]
    assert listed(alice_client, pinned="true") == ["B"]
    assert listed(alice_client, pinned="false") == ["A"]
    assert listed(alice_client, archived="true") == ["C"]

    assert patch(alice_client, f"/api/conversations/{c.pk}", {"archived": False}).json()["archived_at"] is None
    assert patch(alice_client, f"/api/conversations/{a.pk}", {"folder_id": None}).json()["folder_id"] is None
    # A change that names neither leaves the folder as it is.
    patch(alice_client, f"/api/conversations/{a.pk}", {"folder_id": work["id"]})
    assert patch(alice_client, f"/api/conversations/{a.pk}", {"title": "A2"}).json()["folder_id"] == work["id"]

    renamed = patch(alice_client, f"/api/folders/{work['id']}", {"name": "Job"})
    assert renamed.json()["name"] == "Job"
    assert alice_client.delete(f"/api/folders/{work['id']}").status_code == 204
    assert Conversation.objects.get(pk=a.pk).folder is None  # back in the list, not deleted


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"name": ""}, 422),
        ({"name": "   "}, 422),
        ({"name": "x" * 101}, 422),
        ({"name": 7}, 422),
        ({"name": "a\x00b"}, 422),
        ({"name": "Work", "colour": "red"}, 422),
    ],
)
def test_a_bad_folder_is_refused_with_a_reason(alice_client, body, status):
    response = post(alice_client, "/api/folders", body)
    assert response.status_code == status, response.content
    assert response.json()["detail"]
    assert not Folder.objects.exists()


def test_a_second_folder_of_the_same_name_and_too_many_pins_are_refused(alice_client, alice, monkeypatch):
    post(alice_client, "/api/folders", {"name": "Work"})
    twice = post(alice_client, "/api/folders", {"name": "Work"})
    assert twice.status_code == 409
    assert twice.json()["detail"] == "You already have a folder with this name."
    monkeypatch.setattr(folders, "MAX_PINNED", 0)
    conversation = Conversation.objects.create(owner=alice)
    refused = patch(alice_client, f"/api/conversations/{conversation.pk}", {"pinned": True, "title": "New"})
    assert refused.status_code == 409
    assert Conversation.objects.get(pk=conversation.pk).title == ""  # nothing of the request was saved


@pytest.mark.parametrize("change", [{"pinned": "yes"}, {"archived": 1}, {"folder_id": 0}, {"folder_id": "1"}])
def test_a_bad_pin_archive_or_folder_is_refused(alice_client, alice, change):
    conversation = Conversation.objects.create(owner=alice)
    assert patch(alice_client, f"/api/conversations/{conversation.pk}", change).status_code == 422


def test_another_persons_folder_conversation_and_own_preset_are_404_on_every_route(alice_client, bob_client, bob):
    bobs_folder = Folder.objects.create(owner=bob, name="Bob's")
    bobs = Conversation.objects.create(owner=bob, title="Bob's")
    bobs_preset = Preset.objects.create(owner=bob, name="Bob's preset", system_prompt="Bob's secret")
    probes = [
        ("patch", f"/api/folders/{bobs_folder.pk}", {"name": "Mine"}),
        ("delete", f"/api/folders/{bobs_folder.pk}", None),
        ("patch", f"/api/conversations/{bobs.pk}", {"pinned": True}),
        ("patch", f"/api/conversations/{bobs.pk}", {"archived": True}),
        ("get", f"/api/presets/{bobs_preset.pk}", None),
        ("patch", f"/api/presets/{bobs_preset.pk}", {"name": "Mine"}),
        ("delete", f"/api/presets/{bobs_preset.pk}", None),
        ("post", "/api/conversations", {"preset_id": bobs_preset.pk}),
    ]
    for method, url, body in probes:
        response = getattr(alice_client, method)(url, body, content_type="application/json")
        assert response.status_code == 404, (method, url, response.status_code)
        assert "secret" not in response.text
    # Her conversation into his folder: his folder is not found.
    mine = post(alice_client, "/api/conversations", {}).json()["id"]
    assert patch(alice_client, f"/api/conversations/{mine}", {"folder_id": bobs_folder.pk}).status_code == 404
    assert alice_client.get("/api/folders").json() == []
    assert alice_client.get("/api/presets").json() == []
    assert listed(alice_client, folder_id=str(bobs_folder.pk)) == []
    bobs.refresh_from_db()
    assert (bobs.pinned, bobs.archived_at) == (False, None)
    assert Folder.objects.get(pk=bobs_folder.pk).name == "Bob's"
    assert Preset.objects.get(pk=bobs_preset.pk).name == "Bob's preset"


def test_a_preset_starts_a_conversation_with_its_settings(alice_client, alice):
    made = post(
        alice_client,
        "/api/presets",
        {"name": "Terse", "system_prompt": "Answer in one line.", "temperature": 0.2, "top_p": 0.5, "max_tokens": 64},
    )
    assert made.status_code == 201, made.content
    preset = made.json()
    assert (preset["mine"], preset["shared"], preset["model"]) == (True, False, "")
    created = post(alice_client, "/api/conversations", {"preset_id": preset["id"], "top_p": 0.9}).json()
    assert (created["system_prompt"], created["temperature"], created["max_tokens"]) == ("Answer in one line.", 0.2, 64)
    assert created["top_p"] == 0.9  # the request's own over the preset's
    changed = patch(alice_client, f"/api/presets/{preset['id']}", {"temperature": 1.0})
    assert changed.json()["temperature"] == 1.0 and changed.json()["name"] == "Terse"
    assert alice_client.delete(f"/api/presets/{preset['id']}").status_code == 204
    assert not Preset.objects.exists()


def test_only_staff_share_presets_which_everyone_sees_and_only_staff_change(alice_client, bob_client, alice, bob):
    refused = post(alice_client, "/api/presets", {"name": "For all", "shared": True})
    assert refused.status_code == 403
    bob.is_staff = True
    bob.save()
    shared = post(bob_client, "/api/presets", {"name": "Team style", "system_prompt": "Be kind.", "shared": True})
    assert shared.status_code == 201
    seen = alice_client.get("/api/presets").json()
    assert [(p["name"], p["mine"], p["shared"]) for p in seen] == [("Team style", False, True)]
    assert alice_client.get(f"/api/presets/{seen[0]['id']}").status_code == 200
    created = post(alice_client, "/api/conversations", {"preset_id": seen[0]["id"]}).json()
    assert created["system_prompt"] == "Be kind."
    assert patch(alice_client, f"/api/presets/{seen[0]['id']}", {"name": "Mine"}).status_code == 404
    assert alice_client.delete(f"/api/presets/{seen[0]['id']}").status_code == 404
    assert Preset.objects.get().name == "Team style"

    # Bob leaves the staff: the preset he shared stays everyone's, and he no longer changes it.
    bob.is_staff = False
    bob.save()
    assert patch(bob_client, f"/api/presets/{seen[0]['id']}", {"system_prompt": "Be rude."}).status_code == 404
    assert bob_client.delete(f"/api/presets/{seen[0]['id']}").status_code == 404
    assert Preset.objects.get().system_prompt == "Be kind."


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "T", "temperature": 9},
        {"name": "T", "temperature": "0.5"},
        {"name": "T", "top_p": -1},
        {"name": "T", "max_tokens": 0},
        {"name": "T", "system_prompt": "a\x00b"},
        {"name": "T", "model": "no-such-model"},
        {"name": "T", "nonsense": 1},
    ],
)
def test_a_bad_preset_is_refused_with_a_reason(alice_client, body, fake_vllm):
    response = post(alice_client, "/api/presets", body)
    assert response.status_code in (404, 422), response.content
    assert response.json()["detail"]
    assert not Preset.objects.exists()


def test_the_api_with_the_browsers_session_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    folder = Folder.objects.create(owner=alice, name="Work")
    preset = Preset.objects.create(owner=alice, name="Mine")
    conversation = Conversation.objects.create(owner=alice)
    for method, url, body in [
        ("post", "/api/folders", {"name": "New"}),
        ("patch", f"/api/folders/{folder.pk}", {"name": "New"}),
        ("delete", f"/api/folders/{folder.pk}", None),
        ("post", "/api/presets", {"name": "New"}),
        ("patch", f"/api/presets/{preset.pk}", {"name": "New"}),
        ("delete", f"/api/presets/{preset.pk}", None),
        ("patch", f"/api/conversations/{conversation.pk}", {"pinned": True}),
    ]:
        response = getattr(client, method)(url, body, content_type="application/json")
        assert response.status_code == 403, (method, url)
    assert list(Folder.objects.values_list("name", flat=True)) == ["Work"]
    assert list(Preset.objects.values_list("name", flat=True)) == ["Mine"]
    assert not Conversation.objects.get().pinned
