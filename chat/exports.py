"""A person's conversations written out: one as Markdown to read, any number as JSON to carry.

The JSON is the site's own export format, which chat/imports.py reads back:

    {"format": "chatsite.conversations", "version": 2, "exported_at": "...",
     "conversations": [{"id": 7, "title": ..., "system_prompt": ..., "temperature": ...,
                        "max_tokens": ..., "top_p": ..., "created_at": ..., "updated_at": ...,
                        "pinned": false, "archived_at": null, "folder": "Work",
                        "branch_tip_id": 34,
                        "messages": [{"id": 31, "parent_id": null, "role": "user", "content": ...,
                                      "status": ..., ...}, ...]}]}

Every stored field is written, timestamps included, so that an export imported into another
account and exported again is the same file but for the ids (the database's own numbers, which the
importing site assigns anew) and `exported_at`. A conversation is a tree (chat/branches.py): every
version of every message is written, each after the one it follows (`parent_id`), with the last
message of the branch shown (`branch_tip_id`). Version 1, from before there were branches, had
neither: its messages were one line, and are imported as one.

The Markdown is the conversation as the page shows it: the branch shown.
"""

import io
import itertools
import json
import tempfile
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from datetime import datetime
from typing import IO

from asgiref.sync import sync_to_async
from django.db.models import Prefetch, QuerySet
from django.http import FileResponse, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.text import slugify

from chat.branches import Tree, shown_branch
from chat.models import Attachment, Conversation, ConversationQuerySet, Message

FORMAT = "chatsite.conversations"
VERSION = 2

CONVERSATION_FIELDS = (
    *("title", "system_prompt", "temperature", "max_tokens", "top_p", "created_at", "updated_at"),
    *("pinned", "archived_at"),  # where the sidebar shows it (chat/folders.py), with `folder`'s name
)
MESSAGE_FIELDS = (
    "role",
    "content",
    "status",
    "finish_reason",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "model_name",
    "time_to_first_token",
    "duration",
    "created_at",
    "updated_at",
)


FILE_FIELDS = ("name", "kind", "content_type", "size", "pages", "text")


def with_messages(conversations: QuerySet[Conversation]) -> QuerySet[Conversation]:
    # In the order they were written: each message after the one it follows; a prompt with its files.
    messages = Prefetch("messages", queryset=Message.objects.order_by("pk").prefetch_related("attachments"))
    return conversations.select_related("folder").prefetch_related(messages)


def _value(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def conversation_record(conversation: Conversation) -> dict[str, object]:
    """One conversation as the export holds it; its messages must be prefetched (`with_messages`)."""
    messages = list(conversation.messages.all())
    return {
        "id": conversation.pk,
        **{name: _value(getattr(conversation, name)) for name in CONVERSATION_FIELDS},
        "folder": conversation.folder.name if conversation.folder else "",
        "branch_tip_id": Tree((m.pk, m.parent_id) for m in messages).tip(conversation.branch_tip_id),
        "messages": [
            {
                "id": message.pk,
                "parent_id": message.parent_id,
                **{name: _value(getattr(message, name)) for name in MESSAGE_FIELDS},
                # Only where there are some: an export with no files reads as before there were any.
                **({"files": [file_record(a) for a in message.attachments.all()]} if message.attachments.all() else {}),
                **({"files_cut": message.files_cut} if message.files_cut else {}),
            }
            for message in messages
        ],
    }


def file_record(attachment: Attachment) -> dict[str, object]:
    """A prompt's file as the export holds it: what the model read of it. The zip export holds its
    bytes too, as files/<id> (`zip_chunks`)."""
    return {"id": str(attachment.pk), **{name: getattr(attachment, name) for name in FILE_FIELDS}}


def json_chunks(conversations: ConversationQuerySet) -> Iterator[str]:
    """The export of `conversations`, newest first, as pieces of one JSON document.

    Written as it is read, a few conversations at a time, so a long history is never held whole.
    """
    header = {"format": FORMAT, "version": VERSION, "exported_at": timezone.now().isoformat()}
    yield json.dumps(header, ensure_ascii=False)[:-1] + ', "conversations": ['
    rows = with_messages(conversations.newest_first()).iterator(chunk_size=100)
    for n, conversation in enumerate(rows):
        yield ("," if n else "") + "\n" + json.dumps(conversation_record(conversation), ensure_ascii=False)
    yield "\n]}\n"


def as_json(conversations: ConversationQuerySet) -> str:
    return "".join(json_chunks(conversations))


def as_zip(conversations: ConversationQuerySet) -> IO[bytes]:
    """The JSON export as conversations.json, and each prompt's file as it was sent, files/<id>:
    the zip export, which chat/imports.py reads back whole. Written to a temporary file (on disk
    past a few MB), never held in memory."""
    written = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    with zipfile.ZipFile(written, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("conversations.json", "w") as document:
            for chunk in json_chunks(conversations):
                document.write(chunk.encode())
        for attachment in Attachment.objects.filter(message__conversation__in=conversations).only("id"):
            if attachment.path.is_file():
                archive.write(attachment.path, f"files/{attachment.pk}")
    written.seek(0)
    return written


async def in_thread(chunks: Iterable[str], batch: int = 20) -> AsyncGenerator[str]:
    """`chunks`, read a batch at a time in Django's thread for the ORM, for an async response.

    Under ASGI, Django would read a plain iterator whole before sending the first byte.
    """
    pieces = iter(chunks)
    take = sync_to_async(lambda: "".join(itertools.islice(pieces, batch)))
    try:
        while text := await take():
            yield text
    finally:
        # A download cut short leaves the reading half done, its database cursor open. It is
        # closed on the thread that read, whose connection serves that thread's next requests
        # (chatsite/request_threads.py): an open SQLite read would hold them to an old snapshot.
        if (close := getattr(pieces, "close", None)) is not None:
            await sync_to_async(close)()


# Keyed by the stored role, a plain str; a role with no heading here is written as stored.
ROLE_HEADINGS: dict[str, str] = {Message.Role.USER: "You", Message.Role.ASSISTANT: "Assistant"}


def as_markdown(conversation: Conversation) -> str:
    """The conversation to read anywhere, as the page shows it: a heading per message of the branch
    shown, the texts as they are (Markdown)."""
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    lines += [f"*{_when(conversation.created_at)} · temperature {conversation.temperature:g}*", ""]
    if conversation.system_prompt:
        lines += ["**System prompt**", "", *_quoted(conversation.system_prompt), ""]
    for message, _ in shown_branch(conversation):
        heading = ROLE_HEADINGS.get(message.role, message.role)
        if message.role == Message.Role.ASSISTANT and message.model_name:
            heading += f" ({message.model_name})"
        lines += [f"## {heading}", "", message.content or "*(no text)*", ""]
        if files := [attachment.name for attachment in message.attachments.all()]:
            lines += ["*Files: " + ", ".join(files) + "*", ""]
        if message.status != Message.Status.COMPLETE:
            note = message.get_status_display()
            lines += [f"*{note}{': ' + message.error if message.error else ''}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


def _quoted(text: str) -> list[str]:
    return [f"> {line}".rstrip() for line in text.splitlines()]


def download(content: str | AsyncIterator[str] | IO[bytes], content_type: str, name: str) -> HttpResponseBase:
    """An export as the file a browser saves, for the page and the API alike; streamed if it is."""
    response: HttpResponseBase
    if isinstance(content, io.IOBase | tempfile.SpooledTemporaryFile):
        response = FileResponse(content, content_type=content_type)
    elif isinstance(content, str):
        response = HttpResponse(content, content_type=content_type)
    else:
        response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response


def filename(conversation: Conversation | None, extension: str) -> str:
    """A file name that says what is in it: the conversation's title, or "conversations"."""
    if conversation is None:
        return f"conversations-{timezone.localdate().isoformat()}.{extension}"
    return f"{slugify(conversation.title, allow_unicode=True)[:60] or 'conversation'}-{conversation.pk}.{extension}"
