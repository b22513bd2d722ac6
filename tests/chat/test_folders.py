"""chat/folders.py on the page: pin, folders, archive; another person's is a 404 on every new URL;
CSRF on every change; bad input refused with a message, never a 500."""

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from chat import exports, folders, imports, search
from chat.models import Conversation, Folder

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice)
    return client


# Where each of the sidebar's lists begins on the page (and where the pinned one ends).
PINNED, FOLDERS, LIST = '<ul class="pinned"', 'id="folders-heading"', '<ul id="conversations"'


def ids(html: str, pattern: str = r'<li id="conversation-(\d+)"', after: str = "", before: str = "") -> list[int]:
    """The ids of the items in the part of the page between the two markers (or the whole page)."""
    if after:
        if after not in html:
            return []
        html = html.split(after, 1)[1]
    if before:
        html = html.split(before, 1)[0]
    return [int(found) for found in re.findall(pattern, html)]


def pinned(html: str) -> list[int]:
    return ids(html, after=PINNED, before=FOLDERS)


def listed(html: str) -> list[int]:
    return ids(html, after=LIST)


def test_a_pinned_conversation_is_at_the_top_and_out_of_the_list(signed_in, alice):
    older = Conversation.objects.create(owner=alice, title="Older")
    newer = Conversation.objects.create(owner=alice, title="Newer")
    response = signed_in.post(reverse("chat:pin", args=[older.pk]), {"pinned": "true"}, headers=HTMX)
    assert response.status_code == 200
    # The sidebar again, swapped in out of band: the pinned list, then the rest.
    assert pinned(response.text) == [older.pk]
    assert listed(response.text) == [newer.pk]
    page = signed_in.get("/").text
    assert pinned(page) == [older.pk]
    assert listed(page) == [newer.pk]
    older.refresh_from_db()
    assert older.pinned
    # Pinning is not activity: the conversation keeps its place in time.
    assert older.updated_at < newer.updated_at

    signed_in.post(reverse("chat:pin", args=[older.pk]), {"pinned": "false"}, headers=HTMX)
    assert listed(signed_in.get("/").text) == [newer.pk, older.pk]


def test_a_conversation_moved_into_a_folder_is_listed_in_it_when_opened(signed_in, alice):
    work = folders.create_folder(alice, "Work")
    filed, other = (Conversation.objects.create(owner=alice, title=t) for t in ("Filed", "Other"))
    response = signed_in.post(reverse("chat:move", args=[filed.pk]), {"folder": str(work.pk)}, headers=HTMX)
    assert response.status_code == 200
    assert listed(response.text) == [other.pk]
    assert ids(response.text, r'<li class="folder" id="folder-(\d+)"') == [work.pk]
    opened = signed_in.get(reverse("chat:folder", args=[work.pk]), headers=HTMX)
    assert ids(opened.text) == [filed.pk]
    # Out of the folder: back in the list.
    signed_in.post(reverse("chat:move", args=[filed.pk]), {"folder": ""}, headers=HTMX)
    assert listed(signed_in.get("/").text) == [other.pk, filed.pk]
    assert "No chats in this folder yet" in signed_in.get(reverse("chat:folder", args=[work.pk])).text


def test_a_deleted_folder_gives_its_conversations_back_to_the_list(signed_in, alice):
    work = folders.create_folder(alice, "Work")
    filed = Conversation.objects.create(owner=alice, title="Filed", folder=work)
    assert signed_in.post(reverse("chat:delete-folder", args=[work.pk]), headers=HTMX).status_code == 200
    assert listed(signed_in.get("/").text) == [filed.pk]
    assert Conversation.objects.get(pk=filed.pk).folder is None


def test_an_archived_conversation_leaves_the_sidebar_is_still_found_and_can_be_restored(signed_in, alice):
    work = folders.create_folder(alice, "Work")
    kept = Conversation.objects.create(owner=alice, title="Tax return 2025", pinned=True, folder=work)
    assert signed_in.post(reverse("chat:archive", args=[kept.pk]), headers=HTMX).status_code == 200
    page = signed_in.get("/").text
    assert f"conversation-{kept.pk}" not in page
    assert signed_in.get(reverse("chat:folder", args=[work.pk])).text.count(f"conversation-{kept.pk}") == 0
    # Still searchable, still opens, listed on the archive page.
    assert [hit.conversation_id for hit in search.search(alice, "tax").conversations] == [kept.pk]
    opened = signed_in.get(reverse("chat:conversation", args=[kept.pk]))
    assert "This chat is archived: it is not in the sidebar." in opened.text
    archive = signed_in.get(reverse("chat:archived")).text
    assert ids(archive, r'<li id="archived-(\d+)"') == [kept.pk]
    # Restored: back where it was, pinned and in its folder.
    assert signed_in.post(reverse("chat:restore", args=[kept.pk]), headers=HTMX).status_code == 200
    assert pinned(signed_in.get("/").text) == [kept.pk]
    assert Conversation.objects.get(pk=kept.pk).folder == work
    assert "No archived chats." in signed_in.get(reverse("chat:archived")).text


def test_without_htmx_each_change_goes_back_to_the_page(signed_in, alice):
    conversation = Conversation.objects.create(owner=alice)
    response = signed_in.post(reverse("chat:pin", args=[conversation.pk]), {"pinned": "true"})
    assert response.status_code == 302 and response["Location"] == reverse("chat:conversation", args=[conversation.pk])
    assert signed_in.post(reverse("chat:create-folder"), {"name": "Work"})["Location"] == reverse("chat:index")
    signed_in.post(reverse("chat:archive", args=[conversation.pk]))
    assert signed_in.post(reverse("chat:restore", args=[conversation.pk]))["Location"] == reverse("chat:archived")


def test_folder_names_are_checked(signed_in, alice):
    url = reverse("chat:create-folder")
    for name, error in [
        ("", "A folder needs a name."),
        ("   ", "A folder needs a name."),
        ("x" * 101, "A folder's name is at most 100 characters."),
        ("a\x00b", "Null characters are not allowed."),
    ]:
        response = signed_in.post(url, {"name": name}, headers=HTMX)
        assert (response.status_code, response.json()) == (400, {"error": error}), name
    assert signed_in.post(url, {"name": "  Work  "}, headers=HTMX).status_code == 200
    assert Folder.objects.get().name == "Work"
    response = signed_in.post(url, {"name": "Work"}, headers=HTMX)
    assert response.json() == {"error": "You already have a folder with this name."}
    home = folders.create_folder(alice, "Home")
    response = signed_in.post(reverse("chat:rename-folder", args=[home.pk]), {"name": "Work"}, headers=HTMX)
    assert response.status_code == 400
    assert Folder.objects.get(pk=home.pk).name == "Home"


def test_a_person_has_at_most_so_many_folders_and_pins(signed_in, alice, monkeypatch):
    monkeypatch.setattr(folders, "MAX_FOLDERS", 2)
    monkeypatch.setattr(folders, "MAX_PINNED", 1)
    for name in ("One", "Two"):
        folders.create_folder(alice, name)
    response = signed_in.post(reverse("chat:create-folder"), {"name": "Three"}, headers=HTMX)
    assert response.json() == {"error": "You have 2 folders, the most there can be."}
    first, second = Conversation.objects.create(owner=alice), Conversation.objects.create(owner=alice)
    signed_in.post(reverse("chat:pin", args=[first.pk]), {"pinned": "true"}, headers=HTMX)
    response = signed_in.post(reverse("chat:pin", args=[second.pk]), {"pinned": "true"}, headers=HTMX)
    assert response.json() == {"error": "You have 1 pinned chats, the most there can be."}
    assert not Conversation.objects.get(pk=second.pk).pinned


@pytest.mark.parametrize("folder", ["abc", "0", "-1", "99999999999999999999", "1.5", "٣"])
def test_a_folder_that_is_no_number_is_refused(signed_in, alice, folder):
    conversation = Conversation.objects.create(owner=alice)
    response = signed_in.post(reverse("chat:move", args=[conversation.pk]), {"folder": folder}, headers=HTMX)
    assert response.status_code == 400


@pytest.mark.parametrize("after", ["x", "1-0", "999999999999999999-1", "1"])
def test_a_folder_page_after_a_place_it_could_not_have_given_is_refused(signed_in, alice, after):
    work = folders.create_folder(alice, "Work")
    assert signed_in.get(reverse("chat:folder", args=[work.pk]), {"after": after}).status_code == 400


def test_the_archive_page_takes_any_page_number(signed_in):
    for page in ["x", "-3", "0", "99999999999999999999999"]:
        assert signed_in.get(reverse("chat:archived"), {"page": page}).status_code == 200


def every_new_url(conversation: Conversation, folder: Folder) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("post", reverse("chat:pin", args=[conversation.pk]), {"pinned": "true"}),
        ("post", reverse("chat:move", args=[conversation.pk]), {"folder": ""}),
        ("post", reverse("chat:archive", args=[conversation.pk]), {}),
        ("post", reverse("chat:restore", args=[conversation.pk]), {}),
        ("get", reverse("chat:folder", args=[folder.pk]), {}),
        ("post", reverse("chat:rename-folder", args=[folder.pk]), {"name": "Mine now"}),
        ("post", reverse("chat:delete-folder", args=[folder.pk]), {}),
    ]


def test_another_persons_conversation_or_folder_is_404_on_every_url(client, alice, bob):
    alices = Conversation.objects.create(owner=alice, title="Alice's", pinned=False)
    alices_folder = folders.create_folder(alice, "Alice's folder")
    client.force_login(bob)
    bobs = Conversation.objects.create(owner=bob)
    for method, url, data in every_new_url(alices, alices_folder):
        assert getattr(client, method)(url, data).status_code == 404, url
    # Bob's conversation into Alice's folder: her folder is not found either.
    assert client.post(reverse("chat:move", args=[bobs.pk]), {"folder": alices_folder.pk}).status_code == 404
    alices.refresh_from_db()
    assert (alices.pinned, alices.archived_at, alices.folder) == (False, None, None)
    assert Folder.objects.get(pk=alices_folder.pk).name == "Alice's folder"
    assert Conversation.objects.get(pk=bobs.pk).folder is None
    # Nor is anything of hers on his pages.
    assert "Alice" not in client.get("/").text
    assert "Alice" not in client.get(reverse("chat:archived")).text


def test_every_change_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    conversation = Conversation.objects.create(owner=alice)
    folder = folders.create_folder(alice, "Work")
    posts = [(url, data) for method, url, data in every_new_url(conversation, folder) if method == "post"]
    for url, data in [*posts, (reverse("chat:create-folder"), {"name": "New"})]:
        assert client.post(url, data).status_code == 403, url
    conversation.refresh_from_db()
    assert (conversation.pinned, conversation.archived_at) == (False, None)
    assert list(Folder.objects.values_list("name", flat=True)) == ["Work"]


def test_pins_folders_and_the_archive_are_kept_by_export_and_import(alice, bob):
    work = folders.create_folder(alice, "Work")
    folders.create_folder(bob, "Work")  # Bob's own folder of that name takes the imported chats
    Conversation.objects.create(owner=alice, title="Pinned", pinned=True)
    Conversation.objects.create(owner=alice, title="Filed", folder=work)
    archived = Conversation.objects.create(owner=alice, title="Archived", folder=work)
    folders.archive(archived)
    Conversation.objects.create(owner=alice, title="Elsewhere", folder=folders.create_folder(alice, "Home"))
    exported = json.loads(exports.as_json(Conversation.objects.owned_by(alice)))
    imports.import_file(bob, json.dumps(exported).encode())
    kept = {
        c.title: (c.pinned, c.folder.name if c.folder else None, c.archived_at)
        for c in Conversation.objects.filter(owner=bob)
    }
    assert kept == {
        "Pinned": (True, None, None),
        "Filed": (False, "Work", None),
        "Archived": (False, "Work", Conversation.objects.get(pk=archived.pk).archived_at),
        "Elsewhere": (False, "Home", None),
    }
    assert sorted(Folder.objects.filter(owner=bob).values_list("name", flat=True)) == ["Home", "Work"]
    again = json.loads(exports.as_json(Conversation.objects.owned_by(bob)))
    strip = ("id", "branch_tip_id", "messages")
    assert [{k: v for k, v in c.items() if k not in strip} for c in again["conversations"]] == [
        {k: v for k, v in c.items() if k not in strip} for c in exported["conversations"]
    ]


def test_an_import_with_a_bad_folder_name_is_refused_and_makes_no_folder(bob):
    document = {
        "format": "chatsite.conversations",
        "version": 2,
        "conversations": [
            {"title": "A", "folder": "Fine", "messages": []},
            {"title": "B", "folder": "x" * 101, "messages": []},
        ],
    }
    with pytest.raises(imports.ImportRefused):
        imports.import_file(bob, json.dumps(document).encode())
    assert not Folder.objects.exists() and not Conversation.objects.exists()


def test_an_import_pins_and_files_within_the_limits(bob, monkeypatch):
    monkeypatch.setattr(folders, "MAX_PINNED", 2)
    monkeypatch.setattr(folders, "MAX_FOLDERS", 1)
    folders.create_folder(bob, "Mine")
    Conversation.objects.create(owner=bob, pinned=True)
    records = [{"title": f"C{n}", "pinned": True, "folder": f"F{n}", "messages": []} for n in range(3)]
    document = {"format": "chatsite.conversations", "version": 2, "conversations": records}
    imports.import_file(bob, json.dumps(document).encode())
    imported = Conversation.objects.filter(owner=bob).exclude(title="").order_by("title")
    assert [(c.title, c.pinned, c.folder) for c in imported] == [
        ("C0", True, None),
        ("C1", False, None),
        ("C2", False, None),
    ]
    assert list(Folder.objects.values_list("name", flat=True)) == ["Mine"]
