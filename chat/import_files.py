"""chat.import_files: the files of an import's prompts (this site's export, chat/exports.py), kept again.

The JSON export holds each file's text, which is what the model read; the zip export holds its
bytes too, as files/<id>. A file whose bytes are not in the import is kept as its text (named
".txt" after its name, since its bytes are that text). Files count against the person's limit on
files (CHAT_FILES_MAX_BYTES_PER_PERSON): an import that would pass it is refused whole.
"""

import io
import uuid
import zipfile
from typing import Annotated, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.translation import gettext
from pydantic import BaseModel, ConfigDict, Field

from chat import attachments
from chat.attachment_models import Attachment
from chat.import_checks import ImportRefused, Planned, Problem, Text

FILE_KINDS = Literal["text", "markdown", "csv", "json", "code", "pdf", "docx", "html"]


class SiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None  # the exporting site's: its bytes are files/<id> in a zip export
    name: Annotated[str, Field(max_length=1000)]
    kind: FILE_KINDS = "text"
    content_type: Annotated[str, Field(max_length=100)] = "text/plain"
    size: Annotated[int, Field(ge=0)] = 0
    pages: Annotated[int, Field(ge=0, le=100_000)] | None = None
    text: Annotated[Text, Field(max_length=attachments.MAX_CHARS)] = ""


def _original(archive: zipfile.ZipFile | None, file: SiteFile) -> bytes | None:
    if archive is None or file.id is None:
        return None
    try:
        member = archive.getinfo(f"files/{uuid.UUID(file.id)}")
    except (KeyError, ValueError):
        return None
    if member.file_size > settings.CHAT_FILE_MAX_BYTES:
        return None
    with archive.open(member) as opened:
        return opened.read(settings.CHAT_FILE_MAX_BYTES + 1)[: settings.CHAT_FILE_MAX_BYTES]


def save_files(user: User, planned: list[Planned], zipped: bytes | None) -> None:
    """Keep the planned prompts' files, their messages saved; inside the import's transaction. The
    bytes are written once it commits."""
    archive = zipfile.ZipFile(io.BytesIO(zipped)) if zipped else None
    rows: list[Attachment] = []
    contents: list[bytes] = []
    for plan in planned:
        for place, files in plan.files.items():
            message = plan.messages[place][0]
            for position, file in enumerate(files):
                name, content_type = attachments.clean_name(file.name), file.content_type
                if (data := _original(archive, file)) is None:
                    data, content_type = file.text.encode(), "text/plain"
                    name = name if name.endswith(".txt") else name + ".txt"
                rows.append(
                    Attachment(
                        owner=user,
                        message=message,
                        name=name,
                        size=len(data),
                        content_type=content_type,
                        kind=file.kind,
                        text=file.text,
                        pages=file.pages,
                        position=position,
                    )
                )
                contents.append(data)
    if not rows:
        return
    kept = Attachment.objects.filter(owner=user).bytes_stored()
    if kept + sum(map(len, contents)) > settings.CHAT_FILES_MAX_BYTES_PER_PERSON:
        raise ImportRefused(
            [
                Problem(
                    (), gettext("The files in this import would take you over the limit on files each person may keep.")
                )
            ]
        )
    Attachment.objects.bulk_create(rows)

    def write() -> None:
        for row, data in zip(rows, contents, strict=True):
            row.path.parent.mkdir(parents=True, exist_ok=True)
            row.path.write_bytes(data)

    transaction.on_commit(write)
