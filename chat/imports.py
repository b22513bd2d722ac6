"""chat.imports: `import_file`, conversations brought in from a file, all or nothing, into one person's history.

The file is the site's own JSON export (chat/import_site.py) or ChatGPT's data export
(chat/import_chatgpt.py).

An import is all or nothing. The whole file is read and checked first: if anything in it is wrong
(too large, not JSON, neither format, a field of the wrong type or out of bounds), nothing is
imported and `ImportRefused` lists every problem with where it is in the file. Otherwise every
conversation is written in one transaction, into the importing person's history only: ids and
owners in the file are never used.

What a file holds that this site has no place for is left out, and the report counts it by reason:
ChatGPT's other branches (its edited prompts and regenerated answers: the branch ChatGPT showed,
from `current_node` back to the root, is the one imported), tool calls and their output, system,
hidden and reasoning messages, and images or other attachments; a conversation with no text left
is not imported at all, and the report names it.

ChatGPT's export (Settings → Data controls → Export data) is a zip holding `conversations.json`, a
list of conversations whose messages form a tree: `mapping` holds the nodes by id, each with its
`parent`, `children` and `message` (`author.role`, `content.content_type`, `content.parts`,
`create_time`, `metadata`). The zip itself or the JSON file inside can be imported.
"""

import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.translation import gettext

from chat import exports, folders
from chat.import_chatgpt import ATTACHMENTS as ATTACHMENTS
from chat.import_chatgpt import EMPTY as EMPTY
from chat.import_chatgpt import NOT_SHOWN as NOT_SHOWN
from chat.import_chatgpt import NOT_TEXT as NOT_TEXT
from chat.import_chatgpt import OTHER_BRANCHES as OTHER_BRANCHES
from chat.import_chatgpt import _read_chatgpt_export
from chat.import_checks import MAX_PROBLEMS as MAX_PROBLEMS
from chat.import_checks import ImportRefused as ImportRefused
from chat.import_checks import ImportTooLarge as ImportTooLarge
from chat.import_checks import Planned
from chat.import_checks import Problem as Problem
from chat.import_files import save_files
from chat.import_site import _read_site_export
from chat.models import Conversation, Message

# An upload's request body is the file and its multipart envelope (boundaries, field and file names).
MULTIPART_ENVELOPE = 64 * 1024


def upload_limit() -> int:
    """The largest request body that can carry an importable file: the doors refuse larger unread."""
    return settings.CHAT_IMPORT_MAX_BYTES + MULTIPART_ENVELOPE


@dataclass(slots=True)
class ImportedConversation:
    id: int
    title: str
    messages: int
    left_out: dict[str, int]


@dataclass(frozen=True, slots=True)
class RefusedConversation:
    where: str
    title: str
    reason: str


@dataclass(slots=True)
class ImportReport:
    format: Literal["chatsite", "chatgpt"]
    imported: list[ImportedConversation] = field(default_factory=list)
    refused: list[RefusedConversation] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        return sum(c.messages for c in self.imported)

    @property
    def left_out(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for conversation in self.imported:
            total.update(conversation.left_out)
        return dict(total)

    @property
    def summary(self) -> str:
        text = f"Imported {len(self.imported)} conversation(s) with {self.message_count} message(s)"
        if left_out := self.left_out:
            text += "; messages left out: " + ", ".join(f"{count} {why}" for why, count in left_out.items())
        if self.refused:
            text += f"; {len(self.refused)} conversation(s) not imported: "
            text += "; ".join(f"{r.where} “{r.title}” ({r.reason})" for r in self.refused)
        return text + "."


def import_file(user: User, upload: IO[bytes] | bytes) -> ImportReport:
    """Read `upload` and add its conversations to `user`'s history, all of them or none.

    Raises ImportRefused (ImportTooLarge over CHAT_IMPORT_MAX_BYTES) with nothing written.
    """
    data, zipped = _contents(upload)
    document = _parse(data)
    if isinstance(document, dict) and document.get("format") == exports.FORMAT:
        report, planned = ImportReport("chatsite"), _read_site_export(user, document)
    elif isinstance(document, list) and (not document or any(isinstance(i, dict) and "mapping" in i for i in document)):
        report, planned = ImportReport("chatgpt"), _read_chatgpt_export(user, document)
    else:
        raise ImportRefused(
            [
                Problem(
                    (),
                    f'This is neither this site\'s export (a JSON object with "format": "{exports.FORMAT}") '
                    'nor ChatGPT\'s conversations.json (a list of conversations with a "mapping").',
                )
            ]
        )
    report.refused = [RefusedConversation(p.where, p.conversation.title, p.refused) for p in planned if p.refused]
    accepted = [plan for plan in planned if not plan.refused]
    _save(accepted, user, zipped)
    report.imported = [
        ImportedConversation(plan.conversation.pk, plan.conversation.title, len(plan.messages), dict(plan.left_out))
        for plan in accepted
    ]
    return report


# --- Reading the file -------------------------------------------------------------------------


def _contents(upload: IO[bytes] | bytes) -> tuple[bytes, bytes | None]:
    """The JSON, and the zip it came in, if it did (this site's zip export holds the prompts' files)."""
    limit = settings.CHAT_IMPORT_MAX_BYTES
    data = upload if isinstance(upload, bytes) else upload.read(limit + 1)
    if len(data) > limit:
        raise ImportTooLarge(limit)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return data, None
    zipped = data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inside = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == "conversations.json"]
            if not inside:
                raise ImportRefused([Problem((), gettext("The zip file holds no conversations.json."))])
            # What the archive says the file's size is, checked before it is unpacked, then what
            # unpacking gives, in case the archive lied.
            if inside[0].file_size > limit:
                raise ImportTooLarge(limit)
            with archive.open(inside[0]) as member:
                data = member.read(limit + 1)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
        raise ImportRefused([Problem((), gettext("The zip file cannot be read: %(why)s") % {"why": exc})]) from None
    if len(data) > limit:
        raise ImportTooLarge(limit)
    return data, zipped


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constant)
    except UnicodeDecodeError:
        message = gettext("The file is not text in UTF-8 (or UTF-16/32).")
    except json.JSONDecodeError as exc:
        message = gettext("The file is not valid JSON: %(why)s at line %(line)s, column %(column)s.") % {
            "why": exc.msg,
            "line": exc.lineno,
            "column": exc.colno,
        }
    except ValueError as exc:
        message = str(exc)
    except RecursionError:
        message = gettext("The file's JSON is nested too deeply.")
    raise ImportRefused([Problem((), message)])


def _no_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which are not JSON and no setting can hold.
    raise ValueError(gettext("The file is not valid JSON: %(name)s is not a number JSON allows.") % {"name": name})


# --- Saving -------------------------------------------------------------------------------------


def _save(planned: list[Planned], user: User, zipped: bytes | None) -> None:
    """Write every planned conversation and message in one transaction.

    bulk_create gives `created_at` and `updated_at` the time of saving (auto_now), so the file's
    timestamps are written over them afterwards: a conversation keeps its place in history.
    """
    with transaction.atomic():
        folders.ImportedPlaces.save_new([plan.conversation for plan in planned])
        Conversation.objects.bulk_create([plan.conversation for plan in planned], batch_size=500)
        messages = []
        for plan in planned:
            plan.conversation.created_at, plan.conversation.updated_at = plan.created_at, plan.updated_at
            for message, created_at, updated_at in plan.messages:
                message.conversation = plan.conversation
                messages.append((message, created_at, updated_at))
        Message.objects.bulk_create([m for m, _, _ in messages], batch_size=500)
        for message, created_at, updated_at in messages:
            message.created_at, message.updated_at = created_at, updated_at
        # With their ids known: each message's parent, and each conversation's branch shown.
        for plan in planned:
            _link(plan)
        conversation_fields = ["created_at", "updated_at", "branch_tip"]
        Conversation.objects.bulk_update([plan.conversation for plan in planned], conversation_fields, 500)
        Message.objects.bulk_update([m for m, _, _ in messages], ["created_at", "updated_at", "parent"], 500)
        save_files(user, planned, zipped)


def _link(plan: Planned) -> None:
    saved = [message for message, _, _ in plan.messages]
    parents = plan.parents if plan.parents is not None else [None, *range(len(saved) - 1)]
    for message, parent in zip(saved, parents, strict=True):
        message.parent = None if parent is None else saved[parent]
    tip = plan.tip if plan.tip is not None else len(saved) - 1
    plan.conversation.branch_tip = saved[tip] if saved else None
