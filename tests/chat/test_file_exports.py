"""A prompt's files in the exports (chat/exports.py) and back through the import (chat/imports.py,
chat/import_files.py): the JSON holds what the model read, the zip the files themselves too."""

import io
import json
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from chat import exports, imports
from chat.models import Attachment, Conversation, Message

pytestmark = pytest.mark.django_db

PDF_TEXT = "Page one of the contract.\fPage two: the deposit."


@pytest.fixture(autouse=True)
def files_root(settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path / "files"


@pytest.fixture
def conversation_with_a_file(alice, django_capture_on_commit_callbacks):
    conversation = Conversation.objects.create(owner=alice, title="Contract")
    prompt = Message.objects.create(conversation=conversation, role="user", content="Summarise it.")
    answer = Message.objects.create(
        conversation=conversation, parent=prompt, role="assistant", content="Deposit.", files_cut=[]
    )
    attachment = Attachment.objects.create(
        owner=alice, message=prompt, name="contract.pdf", size=9, content_type="application/pdf", kind="pdf",
        text=PDF_TEXT, pages=2,
    )  # fmt: skip
    attachment.path.parent.mkdir(parents=True)
    attachment.path.write_bytes(b"%PDF-1.7 bytes")
    conversation.branch_tip = answer
    conversation.save()
    return conversation


def test_the_json_export_holds_each_prompts_files_text(alice, conversation_with_a_file):
    document = json.loads(exports.as_json(Conversation.objects.owned_by(alice)))
    prompt, answer = document["conversations"][0]["messages"]
    [file] = prompt["files"]
    assert file["name"] == "contract.pdf" and file["text"] == PDF_TEXT and file["pages"] == 2 and file["kind"] == "pdf"
    assert "files" not in answer  # an export with no files reads as before there were any
    assert "*Files: contract.pdf*" in exports.as_markdown(conversation_with_a_file)


def test_a_json_import_brings_the_files_back_as_their_text(
    alice, bob, conversation_with_a_file, django_capture_on_commit_callbacks
):
    exported = exports.as_json(Conversation.objects.owned_by(alice)).encode()
    with django_capture_on_commit_callbacks(execute=True):
        imports.import_file(bob, exported)
    copy = Attachment.objects.get(owner=bob)
    assert copy.message is not None
    assert copy.message.content == "Summarise it." and copy.message.conversation.owner == bob
    assert copy.text == PDF_TEXT and copy.pages == 2 and copy.kind == "pdf"
    # Its bytes were not in the file: it is kept as its text, and named so.
    assert copy.name == "contract.pdf.txt" and copy.path.read_text() == PDF_TEXT


def test_the_zip_export_holds_the_files_and_its_import_brings_them_back(
    alice, bob, conversation_with_a_file, django_capture_on_commit_callbacks
):
    original = Attachment.objects.get(owner=alice)
    archive = exports.as_zip(Conversation.objects.owned_by(alice)).read()
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert sorted(opened.namelist()) == ["conversations.json", f"files/{original.pk}"]
        assert opened.read(f"files/{original.pk}") == b"%PDF-1.7 bytes"
    with django_capture_on_commit_callbacks(execute=True):
        report = imports.import_file(bob, archive)
    assert len(report.imported) == 1
    copy = Attachment.objects.get(owner=bob)
    assert copy.pk != original.pk and copy.name == "contract.pdf" and copy.content_type == "application/pdf"
    assert copy.path.read_bytes() == b"%PDF-1.7 bytes" and copy.text == PDF_TEXT


def test_an_import_over_the_persons_limit_on_files_is_refused_whole(alice, bob, conversation_with_a_file, settings):
    settings.CHAT_FILES_MAX_BYTES_PER_PERSON = 10
    archive = exports.as_zip(Conversation.objects.owned_by(alice)).read()
    Attachment.objects.create(owner=bob, name="a.txt", size=5, content_type="text/plain", kind="text", text="hello")
    with pytest.raises(imports.ImportRefused):
        imports.import_file(bob, archive)
    assert not Conversation.objects.filter(owner=bob).exists()


def test_the_page_and_the_api_offer_the_zip(client, alice, bob, conversation_with_a_file, make_token):
    client.force_login(alice)
    response = client.get("/export.zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as opened:
        assert "conversations.json" in opened.namelist()
    api = client.get("/api/export?format=zip", HTTP_AUTHORIZATION=f"Bearer {make_token(bob)}")
    with zipfile.ZipFile(io.BytesIO(b"".join(api.streaming_content))) as opened:
        assert opened.namelist() == ["conversations.json"]  # Bob's: none of Alice's files
    # And the page's import takes it back.
    client.force_login(bob)
    archive = exports.as_zip(Conversation.objects.owned_by(alice)).read()
    imported = client.post("/import", {"file": SimpleUploadedFile("export.zip", archive)})
    assert imported.status_code == 200 and Attachment.objects.filter(owner=bob).count() == 1
