"""OpenAI's `file` content parts on /v1/chat/completions (api/openai_compat.py).

A part names a file of the caller's uploaded with POST /api/files (`{"file": {"file_id": ...}}`) or
carries one (`{"file": {"filename": ..., "file_data": "data:...;base64,..."}}`), as OpenAI's SDKs
send a PDF. The prompt's (the last user message's) files are kept with it as a file sent on the page
is; an earlier message's are read for their text only, which goes into that message, since a
client sends its whole history, files and all, on every call.
"""

import base64
import binascii
import uuid

from django.conf import settings
from django.contrib.auth.models import User
from pydantic import BaseModel, ConfigDict

from chat import attachments
from chat.attachment_models import Attachment
from chat.file_context import FileText


class FilePart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    file_id: str | None = None
    filename: str | None = None
    file_data: str | None = None


def _decoded(part: FilePart) -> bytes:
    data = part.file_data or ""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    # Refused by its length before decoding: base64 is 4 characters for 3 bytes.
    if len(data) * 3 // 4 > settings.CHAT_FILE_MAX_BYTES:
        raise attachments.FileRefused(
            f"This file is too large: at most {attachments.size_limit_text(settings.CHAT_FILE_MAX_BYTES)} per file.",
            413,
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise attachments.FileRefused("A file part's file_data is not base64.", 400) from None


def _file_id(part: FilePart) -> uuid.UUID:
    return attachments.parse_ids([part.file_id])[0]


def prompt_files(owner: User, parts: list[FilePart], taken_in: list[Attachment]) -> list[Attachment]:
    """The prompt's files: the caller's by id (another person's is a 404), or taken in from the
    part, and then also put in `taken_in`: the request brought them, and must `forget` them if its
    turn does not keep them."""
    attachments.check_count(len(parts))
    files = []
    for part in parts:
        if part.file_id is not None:
            files += attachments.for_prompt(owner, [_file_id(part)])
        elif part.file_data is not None:
            files.append(attachments.take_in_bytes(owner, part.filename or "file", _decoded(part)))
            taken_in.append(files[-1])
        else:
            raise attachments.FileRefused("A file part needs a file_id or file_data.", 400)
    return files


def forget(taken_in: list[Attachment]) -> None:
    """Delete, rows and bytes, the files a request brought as `file_data` that no prompt kept (a
    later part or the turn was refused): the client never learns their ids, so nothing else would
    send or delete them, and they would count toward the person's total until they expire."""
    if taken_in:
        Attachment.objects.unsent().filter(pk__in=[attachment.pk for attachment in taken_in]).delete()


def earlier_files(owner: User, parts: list[FilePart]) -> list[FileText]:
    """An earlier message's files, as text: read, not kept again."""
    texts = []
    for part in parts:
        if part.file_id is not None:
            [attachment] = attachments.for_prompt(owner, [_file_id(part)])
            texts.append(FileText(attachment.name, attachment.text, attachment.pages))
        elif part.file_data is not None:
            name = attachments.clean_name(part.filename or "file")
            read = attachments.read_bytes(name, _decoded(part))
            pages = read["pages"] if isinstance(read["pages"], int) else None
            texts.append(FileText(name, str(read["text"]), pages))
        else:
            raise attachments.FileRefused("A file part needs a file_id or file_data.", 400)
    return texts
