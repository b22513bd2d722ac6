"""chat.attachments: files a person brings to a prompt: taken in, read, kept, given to a prompt, deleted.

Every door (the page's POST /files, the API's POST /api/files, an OpenAI request's `file` part)
takes a file in through `take_in`: its size against CHAT_FILE_MAX_BYTES and the person's total
against CHAT_FILES_MAX_BYTES_PER_PERSON (413), then its kind and text read in a child process
(chat/file_reading.py) under a time and memory limit; a kind the site does not read is 415, a file
it cannot read (a scanned PDF with no text layer, a broken one) 400. The stored file is named by
the attachment's id, never by the name it came with, which is only shown.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils.translation import gettext, ngettext

from chat.attachment_models import Attachment, stored_path
from chat.models import Message, Someone

ROOT = Path(__file__).resolve().parent.parent
NAME_LENGTH = 255
# The most text kept from one file (characters): far more than any model's context takes.
MAX_CHARS = 2_000_000
# The most pages read of one PDF: a longer one is refused, said so, rather than read for minutes.
MAX_PAGES = 500
# The child reads the file, and imports nothing of the site's (-I: not even from the working folder).
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:]; from chat.file_reading import main; main()"
)


# How many files one worker process reads at once (each in a child process of its own).
READING_AT_ONCE = 2
_reading = threading.BoundedSemaphore(READING_AT_ONCE)


class FileRefused(Exception):
    """A file the site will not take: `status` is the HTTP status every door answers with, the
    message a sentence for a person."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def clean_name(raw: str) -> str:
    """The name to show: its last path part, without control or direction-override characters,
    at most NAME_LENGTH characters with its extension kept; "file" if nothing is left."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rpartition("/")[2]
    # Cc: NUL and other controls; Cf: format characters, among them U+202E (right-to-left
    # override), which makes "txt.exe" read as "exe.txt".
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    name = " ".join(name.split()).strip(" .")
    if len(name) > NAME_LENGTH:
        stem, dot, extension = name.rpartition(".")
        extension = extension[:20] if dot and stem else ""
        name = name[: NAME_LENGTH - len(extension) - 1].rstrip() + ("." + extension if extension else "")
    return name or "file"


def size_limit_text(limit: int) -> str:
    return f"{limit / (1024 * 1024):.0f} MB" if limit >= 1024 * 1024 else f"{limit} bytes"


def check_declared_size(declared: int) -> None:
    """Refuse (413) a request whose body cannot hold a file small enough, before reading it."""
    if declared > settings.CHAT_FILE_MAX_BYTES + MULTIPART_ENVELOPE:
        raise _too_large()


# A request body is the file and its multipart envelope (boundaries, field and file names).
MULTIPART_ENVELOPE = 64 * 1024


def _too_large() -> FileRefused:
    return FileRefused(
        gettext("This file is too large: at most %(limit)s per file.")
        % {"limit": size_limit_text(settings.CHAT_FILE_MAX_BYTES)},
        413,
    )


# Why the child refused a file, as a person reads it (chat/file_reading.py's reasons).
def _refusal(reason: str, name: str) -> FileRefused:
    code, _, detail = reason.partition(":")
    messages = {
        "no_text_layer": gettext(
            "“%(name)s” has no text layer (a scanned PDF?): there is no text in it for the model to read. "
            "Run it through OCR first, or paste its text."
        ),
        "encrypted": gettext("“%(name)s” is encrypted: the site cannot read it."),
        "broken": gettext("“%(name)s” cannot be read: it seems damaged."),
        "empty": gettext("“%(name)s” has no text in it."),
        "too_much_text": gettext("“%(name)s” has more text than the site keeps for one file."),
        "too_large_inside": gettext("“%(name)s” unpacks to more than the site reads for one file."),
        "too_complex": gettext("“%(name)s” is too complex to read in the time and memory allowed."),
        "timeout": gettext("Reading “%(name)s” took too long; it was stopped."),
    }
    if code == "too_many_pages":
        message = gettext("“%(name)s” has %(pages)s pages: at most %(limit)s are read.") % {
            "name": name,
            "pages": detail,
            "limit": MAX_PAGES,
        }
        return FileRefused(message, 400)
    if code in ("image", "binary"):
        return FileRefused(
            gettext(
                "“%(name)s” is not a kind of file the site reads. It reads text, Markdown, CSV, JSON, "
                "source code, PDF (with a text layer), DOCX and HTML."
            )
            % {"name": name},
            415,
        )
    return FileRefused(messages.get(code, messages["broken"]) % {"name": name}, 400)


def read_in_child(path: Path, name: str) -> dict[str, object]:
    """The file's kind, type and text, read by chat/file_reading.py in a child process that is
    killed after CHAT_FILE_EXTRACT_SECONDS; raises FileRefused."""
    command = [
        sys.executable,
        "-I",
        "-c",
        CHILD,
        str(ROOT),
        str(path),
        name,
        str(MAX_PAGES),
        str(MAX_CHARS),
    ]
    # A few children at once per worker process: uploads beyond that wait their turn, for a while.
    if not _reading.acquire(timeout=settings.CHAT_FILE_EXTRACT_SECONDS):
        raise FileRefused(gettext("The site is busy reading other files. Try again in a moment."), 503)
    try:
        # subprocess.run kills the child when the time is up, and reaps it.
        done = subprocess.run(command, capture_output=True, timeout=settings.CHAT_FILE_EXTRACT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise _refusal("timeout", name) from None
    finally:
        _reading.release()
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = {"refused": "too_complex"}  # killed by its memory limit, or crashed in a library's C code
    if not isinstance(answer, dict) or "refused" in answer:
        raise _refusal(str(answer.get("refused", "broken")) if isinstance(answer, dict) else "broken", name)
    return answer


def read_bytes(name: str, data: bytes) -> dict[str, object]:
    """A file's kind and text, read as `read_in_child` reads one, and not kept; raises FileRefused."""
    if len(data) > settings.CHAT_FILE_MAX_BYTES:
        raise _too_large()
    Path(settings.CHAT_FILES_ROOT).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=settings.CHAT_FILES_ROOT, suffix=".part") as passing:
        passing.write(data)
        passing.flush()
        return read_in_child(Path(passing.name), name)


def _check_room(owner_pk: int, size: int, *, lock: bool = True) -> None:
    """Refuse (413) a file that would take the person over CHAT_FILES_MAX_BYTES_PER_PERSON; call
    inside the transaction that saves it (the person's row is locked, so two uploads do not both fit)."""
    if lock:
        get_user_model()._default_manager.select_for_update().get(pk=owner_pk)
    kept = Attachment.objects.filter(owner=owner_pk).bytes_stored()
    limit = settings.CHAT_FILES_MAX_BYTES_PER_PERSON
    if kept + size > limit:
        raise FileRefused(
            gettext(
                "You keep %(kept)s of files, and this one would take you over the %(limit)s each person may keep. "
                "Delete conversations with files you no longer need."
            )
            % {"kept": size_limit_text(kept), "limit": size_limit_text(limit)},
            413,
        )


def take_in(owner: User, upload: UploadedFile[bytes]) -> Attachment:
    """Store and read an uploaded file: the new attachment, not yet with a prompt. Raises FileRefused."""
    return take_in_chunks(owner, upload.name or "", upload.size or 0, upload.chunks())


def take_in_bytes(owner: User, name: str, data: bytes) -> Attachment:
    return take_in_chunks(owner, name, len(data), [data])


def take_in_chunks(owner: User, raw_name: str, size: int, chunks: Iterable[bytes]) -> Attachment:
    name = clean_name(raw_name)
    if size > settings.CHAT_FILE_MAX_BYTES:
        raise _too_large()
    if size == 0:
        raise _refusal("empty", name)
    _check_room(owner.pk, size, lock=False)  # before the work of reading it; again, locked, to keep it
    attachment_id = uuid.uuid4()
    path = stored_path(attachment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a name of its own first: a refused file never sits where a kept one would.
    partial = path.with_suffix(".part")
    try:
        written = 0
        with partial.open("wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > settings.CHAT_FILE_MAX_BYTES:
                    raise _too_large()
                out.write(chunk)
        read = read_in_child(partial, name)
        with transaction.atomic():
            _check_room(owner.pk, written)
            attachment = Attachment.objects.create(
                id=attachment_id,
                owner=owner,
                name=name,
                size=written,
                content_type=str(read["content_type"]),
                kind=str(read["kind"]),
                text=str(read["text"]),
                pages=read["pages"] if isinstance(read["pages"], int) else None,
            )
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return attachment


def parse_ids(values: Sequence[object]) -> list[uuid.UUID]:
    """The file ids a request names, in order and once each; raises FileRefused (400) for one that
    is no id at all, or for more than CHAT_FILES_PER_PROMPT."""
    ids: list[uuid.UUID] = []
    for value in values:
        try:
            file_id = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        except ValueError:
            raise FileRefused(gettext("“%(value)s” is not a file id.") % {"value": str(value)[:60]}, 400) from None
        if file_id not in ids:
            ids.append(file_id)
    check_count(len(ids))
    return ids


def check_count(count: int) -> None:
    limit = settings.CHAT_FILES_PER_PROMPT
    if count > limit:
        raise FileRefused(
            ngettext("A prompt may bring at most %(limit)s file.", "A prompt may bring at most %(limit)s files.", limit)
            % {"limit": limit},
            400,
        )


def for_prompt(user: Someone, ids: Sequence[uuid.UUID]) -> list[Attachment]:
    """The person's files `ids`, in that order; raises FileRefused (404) if one is not theirs or
    does not exist: another person's file is never attached, nor told apart from a missing one."""
    found = {attachment.pk: attachment for attachment in Attachment.objects.owned_by(user).filter(pk__in=ids)}
    if missing := [file_id for file_id in ids if file_id not in found]:
        raise FileRefused(gettext("There is no file %(id)s.") % {"id": missing[0]}, 404)
    return [found[file_id] for file_id in ids]


async def named_by(user: Someone, values: Sequence[object]) -> list[Attachment]:
    """The person's files a request names by id (any door's "files"), checked; raises FileRefused."""
    return await sync_to_async(lambda: for_prompt(user, parse_ids(values)))()


def give_to(prompt: Message, attachments: Sequence[Attachment] | int) -> list[Attachment]:
    """Keep `attachments` with `prompt` (inside the turn's transaction), and return them as kept.
    One already kept with another prompt (an edit, a file id used again) is copied: each prompt
    owns its files. An edit gives the edited prompt's id: its files."""
    if isinstance(attachments, int):
        attachments = list(Attachment.objects.filter(message=attachments))
    kept = []
    for position, attachment in enumerate(attachments):
        if attachment.message_id is None or attachment.message_id == prompt.pk:
            Attachment.objects.filter(pk=attachment.pk).update(message=prompt, position=position)
            attachment.message, attachment.position = prompt, position
            kept.append(attachment)
        else:
            kept.append(copy_to(attachment, prompt, position))
    # For the page that draws the new turn (chat/templatetags/prompt_files.py), with no query.
    prompt.__dict__["kept_files"] = kept
    return kept


def files_read_with(prompt: Message) -> list[Attachment]:
    """The prompt's files if they were read with it (prefetched: chat/branches.py), or as the turn
    that saved it kept them (`give_to`); never a query of its own, so that async views (a sent
    prompt's new turn) and their templates may ask."""
    prefetched = getattr(prompt, "_prefetched_objects_cache", {}).get("attachments")
    if prefetched is not None:
        return list(prefetched)
    kept: list[Attachment] = prompt.__dict__.get("kept_files", [])
    return kept


def copy_to(attachment: Attachment, prompt: Message, position: int) -> Attachment:
    copy = Attachment.objects.create(
        owner_id=attachment.owner_id,
        message=prompt,
        name=attachment.name,
        size=attachment.size,
        content_type=attachment.content_type,
        kind=attachment.kind,
        text=attachment.text,
        pages=attachment.pages,
        position=position,
    )
    copy.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(attachment.path, copy.path)  # the same bytes, kept until both are deleted
    except OSError:
        shutil.copyfile(attachment.path, copy.path)
    return copy


def delete_unsent(user: Someone, file_id: uuid.UUID) -> bool:
    """Delete the person's file not yet sent with a prompt; False if there is none such."""
    deleted, _ = Attachment.objects.owned_by(user).unsent().filter(pk=file_id).delete()
    return bool(deleted)


def delete_expired_unsent() -> int:
    """Delete every file left unsent for CHAT_UNSENT_FILE_HOURS, rows and bytes; returns how many.

    Through the ORM's delete, which signals each row (`remove_stored_file`). The rows are locked
    first (PostgreSQL; SQLite has one writer at a time anyway), so that a file given to a prompt
    meanwhile is either given before, and left alone, or after, when it is gone: a sent file is
    never deleted here. Two workers sweeping at once delete each row once between them.
    """
    with transaction.atomic():
        expired = list(Attachment.objects.expired_unsent().select_for_update().values_list("pk", flat=True))
        deleted, _ = Attachment.objects.filter(pk__in=expired).delete()
    return deleted


def remove_stored_file(sender: type[Attachment], instance: Attachment, using: str, **kwargs: object) -> None:
    """A deleted attachment's bytes go once the delete is committed (a post_delete signal, so also
    when a conversation, a message or a person is deleted: Django deletes cascaded rows one by one
    through the ORM and signals each)."""
    path = instance.path
    transaction.on_commit(lambda: path.unlink(missing_ok=True), using=using)
