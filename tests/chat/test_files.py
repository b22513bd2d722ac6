"""Files a person brings to a prompt (issue 21): the page's doors (chat/file_views.py) take one in,
give it back to its owner alone, safely, and never use its name as a path."""

import json
import threading
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from chat import attachments
from chat.models import Attachment, FileChoice

pytestmark = pytest.mark.django_db

NOTES = "Meeting notes\nThe budget for Busan is 3,000,000 won.\n"


@pytest.fixture(autouse=True)
def files_root(settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path / "files"
    return settings.CHAT_FILES_ROOT


def upload(client: Client, name: str, data: bytes | str) -> tuple[int, dict[str, Any]]:
    content = data.encode() if isinstance(data, str) else data
    response = client.post("/files", {"file": SimpleUploadedFile(name, content)})
    return response.status_code, json.loads(response.content)


def raw_upload(client: Client, name: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """An upload whose multipart filename is exactly `name` (the test client would take its basename)."""
    boundary = "----boundary7MA4YWxk"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.generic("POST", "/files", body, content_type=f"multipart/form-data; boundary={boundary}")
    return response.status_code, json.loads(response.content)


def test_an_uploaded_file_is_kept_read_and_described(client, alice, files_root):
    client.force_login(alice)
    status, body = upload(client, "notes.txt", NOTES)
    assert status == 201, body
    assert body["name"] == "notes.txt" and body["kind"] == "text" and body["size"] == len(NOTES.encode())
    assert body["chars"] == len(NOTES) and body["pages"] is None
    attachment = Attachment.objects.get(pk=body["id"])
    assert attachment.owner == alice and attachment.message is None and attachment.text == NOTES
    # Stored under its id, not its name.
    assert attachment.path.read_text() == NOTES
    assert attachment.path.is_relative_to(files_root) and "notes" not in str(attachment.path)


def test_the_owner_downloads_it_as_an_attachment_with_its_sniffed_type(client, alice):
    client.force_login(alice)
    # An HTML page named as text: served with the type its bytes have, never shown inline.
    page = "<!doctype html><html><body><script>alert(1)</script><p>Hello</p></body></html>"
    _, body = upload(client, "page.txt", page)
    assert body["kind"] == "html"
    response = client.get(f"/files/{body['id']}/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == page.encode()
    assert response["Content-Type"].startswith("text/html")
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    # The model reads its text, not its markup or script.
    assert Attachment.objects.get(pk=body["id"]).text == "Hello"


def test_another_persons_file_is_404_on_every_file_url(client, alice, bob):
    client.force_login(alice)
    _, body = upload(client, "notes.txt", NOTES)
    client.force_login(bob)
    assert client.get(f"/files/{body['id']}/").status_code == 404
    assert client.delete(f"/files/{body['id']}/").status_code == 404
    assert Attachment.objects.filter(pk=body["id"]).exists()
    # Nor does an id that is not one, or that names nothing, answer anything but 404.
    assert client.get("/files/not-a-uuid/").status_code == 404
    assert client.get("/files/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_signed_out_visitors_cannot_upload_or_download(client, alice):
    client.force_login(alice)
    _, body = upload(client, "notes.txt", NOTES)
    client.logout()
    assert client.get(f"/files/{body['id']}/").status_code == 302
    assert client.post("/files", {"file": SimpleUploadedFile("a.txt", b"hi")}).status_code == 302


def test_uploading_and_deleting_need_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/files", {"file": SimpleUploadedFile("a.txt", b"hi")}).status_code == 403
    assert not Attachment.objects.exists()
    attachment = Attachment.objects.create(owner=alice, name="a.txt", size=2, content_type="text/plain", kind="text")
    assert client.delete(f"/files/{attachment.pk}/").status_code == 403


def test_deleting_an_unsent_file_removes_its_row_and_its_bytes(client, alice, django_capture_on_commit_callbacks):
    client.force_login(alice)
    _, body = upload(client, "notes.txt", NOTES)
    path = Attachment.objects.get(pk=body["id"]).path
    with django_capture_on_commit_callbacks(execute=True):  # the bytes go once the delete is committed
        assert client.delete(f"/files/{body['id']}/").status_code == 204
    assert not Attachment.objects.exists() and not path.exists()


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("evil\x00.txt", "evil.txt"),
        ("invoice\u202etxt.exe", "invoicetxt.exe"),  # the right-to-left override, which hides ".exe"
        ("a" * 300 + ".txt", "a" * 251 + ".txt"),
    ],
)
def test_a_files_name_is_shown_cleaned_and_never_used_as_a_path(client, alice, files_root, raw, shown):
    client.force_login(alice)
    status, body = raw_upload(client, raw, NOTES.encode())
    assert status == 201, body
    assert body["name"] == shown
    attachment = Attachment.objects.get(pk=body["id"])
    assert attachment.path == files_root / attachment.pk.hex[:2] / attachment.pk.hex
    assert [path.name for path in files_root.rglob("*") if path.is_file()] == [attachment.pk.hex]
    disposition = client.get(f"/files/{body['id']}/")["Content-Disposition"]
    assert "/" not in disposition and "\\" not in disposition and "\u202e" not in disposition


def test_a_name_with_nothing_left_to_show_is_called_file():
    assert attachments.clean_name("\u202e\u200f") == "file"
    assert attachments.clean_name("..") == "file"
    assert attachments.clean_name(" \x00 ") == "file"


def test_a_file_over_the_size_limit_is_413_with_a_message(client, alice, settings):
    settings.CHAT_FILE_MAX_BYTES = 100
    client.force_login(alice)
    status, body = upload(client, "big.txt", "x" * 101)
    assert status == 413 and "at most 100 bytes per file" in str(body["error"])
    assert not Attachment.objects.exists()


def test_a_persons_files_in_all_have_a_limit(client, alice, bob, settings):
    settings.CHAT_FILES_MAX_BYTES_PER_PERSON = 100
    client.force_login(alice)
    assert upload(client, "a.txt", "a" * 60)[0] == 201
    status, body = upload(client, "b.txt", "b" * 60)
    assert status == 413 and "Delete conversations" in str(body["error"])
    assert Attachment.objects.count() == 1
    client.force_login(bob)  # each person's own total
    assert upload(client, "b.txt", "b" * 60)[0] == 201


@pytest.mark.parametrize(
    "name, data, status",
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, 415),
        ("program.exe", b"MZ\x90\x00" + bytes(range(256)) * 8, 415),
        ("empty.txt", b"", 400),
        ("blank.txt", b"   \n\n  ", 400),
        ("broken.pdf", b"%PDF-1.7\n garbage that is no PDF", 400),
    ],
)
def test_what_the_site_cannot_read_is_refused_with_a_sentence(client, alice, name, data, status):
    client.force_login(alice)
    got, body = upload(client, name, data)
    assert got == status, body
    assert name in str(body["error"]) or status == 400
    assert not Attachment.objects.exists()


def test_a_request_without_a_file_is_400(client, alice):
    client.force_login(alice)
    response = client.post("/files", {"other": "x"})
    assert response.status_code == 400 and "Choose a file" in response.json()["error"]


def test_the_api_takes_a_file_and_gives_it_back_to_its_owner_alone(client, alice, bob, make_token):
    alices, bobs = (
        {"HTTP_AUTHORIZATION": f"Bearer {make_token(alice)}"},
        {"HTTP_AUTHORIZATION": f"Bearer {make_token(bob)}"},
    )
    response = client.post("/api/files", {"file": SimpleUploadedFile("notes.md", b"# Plan\n- Busan\n")}, **alices)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "markdown" and body["name"] == "notes.md"
    download = client.get(f"/api/files/{body['id']}", **alices)
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert client.get(f"/api/files/{body['id']}", **bobs).status_code == 404
    assert client.delete(f"/api/files/{body['id']}", **bobs).status_code == 404
    assert client.get("/api/files/nonsense", **alices).status_code in (404, 422)
    assert client.delete(f"/api/files/{body['id']}", **alices).status_code == 204


def test_the_api_refuses_with_the_same_sentences(client, alice, make_token, settings):
    settings.CHAT_FILE_MAX_BYTES = 10
    token = {"HTTP_AUTHORIZATION": f"Bearer {make_token(alice)}"}
    response = client.post("/api/files", {"file": SimpleUploadedFile("a.txt", b"x" * 11)}, **token)
    assert response.status_code == 413 and "at most 10 bytes per file" in response.json()["detail"]
    response = client.post(
        "/api/files", {"file": SimpleUploadedFile("a.png", b"\x89PNG\r\n\x1a\n" + bytes(200))}, **token
    )
    assert response.status_code in (413, 415)


def test_a_malformed_or_oversized_upload_is_a_clear_refusal_not_a_500(client, alice, settings):
    client.force_login(alice)
    broken = client.generic("POST", "/files", b"--x\r\nnot a part", content_type="multipart/form-data; boundary=x")
    assert broken.status_code == 400
    no_boundary = client.generic("POST", "/files", b"abc", content_type="multipart/form-data")
    assert no_boundary.status_code == 400
    settings.CHAT_FILE_MAX_BYTES = 10
    declared = client.generic(
        "POST", "/files", b"x" * 100_000, content_type="multipart/form-data; boundary=x", CONTENT_LENGTH="100000"
    )
    assert declared.status_code == 413 and "at most 10 bytes per file" in declared.json()["error"]
    assert client.get("/files").status_code == 405
    assert not Attachment.objects.exists()


def test_the_too_long_choice_is_the_persons_and_checked(client, alice):
    client.force_login(alice)
    assert client.post("/files/when-too-long", {"when_too_long": "refuse"}).json() == {"when_too_long": "refuse"}
    assert FileChoice.objects.get(person=alice).when_too_long == "refuse"
    refused = client.post("/files/when-too-long", {"when_too_long": "explode"})
    assert refused.status_code == 400 and refused.json()["error"]


def test_uploads_beyond_the_readers_at_once_wait_then_are_told_the_site_is_busy(client, alice, settings, monkeypatch):
    busy = threading.BoundedSemaphore(1)
    busy.acquire()  # every reader taken, by uploads that do not end
    monkeypatch.setattr(attachments, "_reading", busy)
    settings.CHAT_FILE_EXTRACT_SECONDS = 0.5  # how long a waiting upload waits for its turn
    client.force_login(alice)
    status, body = upload(client, "notes.txt", NOTES)
    assert status == 503 and "busy reading other files" in body["error"]
    assert not Attachment.objects.exists()
