"""Conversations brought in from a file: the site's own JSON export, or ChatGPT's data export.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop, ngettext
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from chat import exports, folders, rules
from chat.models import Conversation, Message

TITLE_LENGTH = Conversation._meta.get_field("title").max_length
MODEL_NAME_LENGTH = Message._meta.get_field("model_name").max_length
FINISH_REASON_LENGTH = Message._meta.get_field("finish_reason").max_length
MAX_COUNT = 2**31 - 1  # what a PositiveIntegerField holds on every database
# Problems listed in full before "and N more": enough to fix a file, not a wall of text.
MAX_PROBLEMS = 50
# An upload's request body is the file and its multipart envelope (boundaries, field and file names).
MULTIPART_ENVELOPE = 64 * 1024


def upload_limit() -> int:
    """The largest request body that can carry an importable file: the doors refuse larger unread."""
    return settings.CHAT_IMPORT_MAX_BYTES + MULTIPART_ENVELOPE


@dataclass(frozen=True, slots=True)
class Problem:
    loc: tuple[str | int, ...]  # where in the file: ("conversations", 3, "messages", 0, "role")
    message: str

    @property
    def where(self) -> str:
        text = ""
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
        return text or "file"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ImportRefused(Exception):
    """Nothing was imported, for these reasons."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems[:MAX_PROBLEMS]
        self.more = len(problems) - len(self.problems)
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        listed = "; ".join(map(str, self.problems))
        more = f"; and {self.more} more" if self.more else ""
        return f"Nothing was imported: {listed}{more}"


class ImportTooLarge(ImportRefused):
    def __init__(self, limit: int) -> None:
        super().__init__(
            [Problem((), gettext("The file is larger than the %(size)s an import may be.") % {"size": _size(limit)})]
        )


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / 1024 / 1024:g} MB"
    return ngettext("%(count)s byte", "%(count)s bytes", count) % {"count": f"{count:,}"}


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
    document = _parse(_contents(upload))
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
    _save(accepted)
    report.imported = [
        ImportedConversation(plan.conversation.pk, plan.conversation.title, len(plan.messages), dict(plan.left_out))
        for plan in accepted
    ]
    return report


# --- Reading the file -------------------------------------------------------------------------


def _contents(upload: IO[bytes] | bytes) -> bytes:
    limit = settings.CHAT_IMPORT_MAX_BYTES
    data = upload if isinstance(upload, bytes) else upload.read(limit + 1)
    if len(data) > limit:
        raise ImportTooLarge(limit)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return data
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
    return data


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


def _storable(value: str) -> str:
    # A NUL or a lone surrogate (json reads "\ud800" without complaint) cannot be stored as text.
    if "\x00" in value:
        raise PydanticCustomError("text", "Holds a NUL character, which cannot be stored.")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError("text", "Must be valid Unicode text.") from None
    return value


def _within(bounds: Callable[[], rules.Bounds]) -> Callable[[float], float]:
    """A generation setting's validator: the page's bounds (chat/rules.py), read when it runs, as
    max tokens' follow the settings."""

    def check(value: float) -> float:
        try:
            return bounds().check(value)
        except ValidationError as exc:
            raise PydanticCustomError("range", exc.messages[0]) from None

    return check


def _problems(error: PydanticValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    return [Problem(prefix + tuple(e["loc"]), e["msg"]) for e in error.errors(include_url=False)]


@dataclass(slots=True)
class Planned:
    """A conversation and its messages as they will be saved, with the timestamps the file gives."""

    where: str
    conversation: Conversation
    created_at: datetime
    updated_at: datetime
    messages: list[tuple[Message, datetime, datetime]] = field(default_factory=list)
    # Each message's parent and the branch's tip, as places in `messages`; by default the messages
    # are one line, each after the one before, and the last is shown.
    parents: list[int | None] | None = None
    tip: int | None = None
    left_out: Counter[str] = field(default_factory=Counter)
    refused: str = ""  # why the conversation is not imported at all, if it is not


# --- This site's export -------------------------------------------------------------------------

Text = Annotated[str, AfterValidator(_storable)]


# The length first: the limit is the column's, checked before the text.
TitleText = Annotated[str, Field(max_length=TITLE_LENGTH), AfterValidator(_storable)]
ModelName = Annotated[str, Field(max_length=MODEL_NAME_LENGTH), AfterValidator(_storable)]
FinishReason = Annotated[str, Field(max_length=FINISH_REASON_LENGTH), AfterValidator(_storable)]


class SiteMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: int | None = None  # the exporting site's; a new one is assigned
    parent_id: int | None = None  # version 2: the id of the message this one follows, given before it
    role: Literal["user", "assistant"]
    content: Text
    status: Literal["streaming", "complete", "stopped", "error", "interrupted"] = "complete"
    finish_reason: FinishReason = ""
    error: Text = ""
    prompt_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    completion_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    model_name: ModelName = ""
    time_to_first_token: Annotated[float, Field(ge=0)] | None = None
    duration: Annotated[float, Field(ge=0)] | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None


def _system_prompt(value: str) -> str:
    if len(value) > settings.CHAT_MAX_PROMPT_CHARS:
        raise PydanticCustomError("too_long", "At most {limit} characters.", {"limit": settings.CHAT_MAX_PROMPT_CHARS})
    return value


class SiteConversation(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: int | None = None
    title: TitleText = ""
    system_prompt: Annotated[Text, AfterValidator(_system_prompt)] = ""
    temperature: Annotated[float, AfterValidator(_within(lambda: rules.TEMPERATURE))] | None = None
    max_tokens: Annotated[int, AfterValidator(_within(rules.max_tokens))] | None = None
    top_p: Annotated[float, AfterValidator(_within(lambda: rules.TOP_P))] | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    branch_tip_id: int | None = None  # version 2: the last message of the branch shown
    pinned: bool = False  # and where the sidebar shows it (chat/folders.py)
    archived_at: AwareDatetime | None = None
    folder: Annotated[Text, Field(max_length=folders.FOLDER_NAME_LENGTH)] = ""
    messages: list[SiteMessage]


class SiteExport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["chatsite.conversations"]
    version: Literal[1, 2]
    exported_at: str | None = None
    conversations: list[SiteConversation]


def _read_site_export(user: User, document: dict[str, Any]) -> list[Planned]:
    try:
        export = SiteExport.model_validate(document)
    except PydanticValidationError as exc:
        raise ImportRefused(_problems(exc)) from None
    now = timezone.now()
    planned = []
    problems: list[Problem] = []
    places = folders.ImportedPlaces(user)
    for n, record in enumerate(export.conversations):
        conversation = Conversation(owner=user, title=record.title, system_prompt=record.system_prompt)
        conversation.pinned = places.pin(record.pinned, archived=record.archived_at is not None)
        conversation.archived_at, conversation.folder = record.archived_at, places.folder(record.folder)
        for name in ("temperature", "max_tokens", "top_p"):
            if (value := getattr(record, name)) is not None:
                setattr(conversation, name, value)
        created = record.created_at or now
        plan = Planned(f"conversations[{n}]", conversation, created, record.updated_at or created)
        if export.version >= 2:
            problems += _plan_tree(plan, record, n)
        for m in record.messages:
            message = Message(**m.model_dump(exclude={"id", "parent_id", "created_at", "updated_at"}))
            if message.status == Message.Status.STREAMING:
                # No turn is generating it here: it ends as a turn cut short by a shutdown does.
                message.status = Message.Status.INTERRUPTED
                message.error = message.error or "This answer was still being written when it was exported."
            message_created = m.created_at or created
            plan.messages.append((message, message_created, m.updated_at or message_created))
        planned.append(plan)
    if problems:
        raise ImportRefused(problems)
    return planned


def _plan_tree(plan: Planned, record: SiteConversation, n: int) -> list[Problem]:
    """A version 2 conversation's tree: each message's parent and the tip, as places in the file's
    list, which must give each message after the one it follows (as exports write them)."""
    places: dict[int, int] = {}
    plan.parents = []
    problems = []
    for i, m in enumerate(record.messages):
        where = ("conversations", n, "messages", i)
        if m.parent_id is not None and m.parent_id not in places:
            problems.append(Problem((*where, "parent_id"), "No message before this one has this id."))
        plan.parents.append(places.get(m.parent_id) if m.parent_id is not None else None)
        if m.id is not None:
            if m.id in places:
                problems.append(Problem((*where, "id"), "Another message of this conversation has this id."))
            places[m.id] = i
    if record.branch_tip_id is not None:
        if record.branch_tip_id not in places:
            problems.append(
                Problem(("conversations", n, "branch_tip_id"), "No message of this conversation has this id.")
            )
        plan.tip = places.get(record.branch_tip_id)
    return problems


# --- ChatGPT's export ---------------------------------------------------------------------------

# Only what is read is described; ChatGPT's many other fields are ignored, and absent ones default.
LOOSE = ConfigDict(extra="ignore", allow_inf_nan=False)


class ChatGPTAuthor(BaseModel):
    model_config = LOOSE
    role: str


class ChatGPTContent(BaseModel):
    model_config = LOOSE
    content_type: str
    parts: list[Any] | None = None


class ChatGPTMessage(BaseModel):
    model_config = LOOSE
    author: ChatGPTAuthor
    content: ChatGPTContent
    create_time: float | None = None
    metadata: dict[str, Any] | None = None
    recipient: str | None = None
    channel: str | None = None


class ChatGPTNode(BaseModel):
    model_config = LOOSE
    message: ChatGPTMessage | None = None
    parent: str | None = None


class ChatGPTConversation(BaseModel):
    model_config = LOOSE
    title: Text | None = None
    create_time: float | None = None
    update_time: float | None = None
    mapping: dict[str, ChatGPTNode]
    current_node: str


CHATGPT_EXPORT = TypeAdapter(list[ChatGPTConversation])

# Why a message of ChatGPT's was left out, as the report says it.
# Reports carry them in English (the API's too); the import page says them in the reader's language.
OTHER_BRANCHES = gettext_noop("on other branches (edited prompts, regenerated answers)")
NOT_SHOWN = gettext_noop("system, tool and hidden messages")
NOT_TEXT = gettext_noop("not text (reasoning, code, browsing…)")
EMPTY = gettext_noop("empty")
ATTACHMENTS = gettext_noop("attachments (images, files, audio)")
# What ChatGPT's finish_details.type means in vLLM's words.
FINISH_REASONS = {"stop": "stop", "max_tokens": "length"}


def _read_chatgpt_export(user: User, document: list[Any]) -> list[Planned]:
    try:
        conversations = CHATGPT_EXPORT.validate_python(document)
    except PydanticValidationError as exc:
        raise ImportRefused(_problems(exc)) from None
    problems: list[Problem] = []
    planned = []
    for n, record in enumerate(conversations):
        try:
            branch = _shown_branch(record)
        except ValueError as exc:
            problems.append(Problem((n, "current_node"), str(exc)))
            continue
        planned.append(_plan_chatgpt_conversation(user, n, record, branch, problems))
    if problems:
        raise ImportRefused(problems)
    return planned


def _shown_branch(record: ChatGPTConversation) -> list[str]:
    """The ids of the nodes ChatGPT showed, root first: from `current_node` up through the parents."""
    branch: list[str] = []
    node_id: str | None = record.current_node
    while node_id is not None:
        if node_id not in record.mapping:
            raise ValueError(f"The message tree has no node {node_id!r}.")
        if node_id in branch:
            raise ValueError("The message tree loops back on itself.")
        branch.append(node_id)
        node_id = record.mapping[node_id].parent
    return branch[::-1]


def _time(timestamp: float | None, default: datetime) -> datetime:
    if timestamp is None:
        return default
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return default


def _plan_chatgpt_conversation(
    user: User, n: int, record: ChatGPTConversation, branch: list[str], problems: list[Problem]
) -> Planned:
    created = _time(record.create_time, timezone.now())
    updated = _time(record.update_time, created)
    conversation = Conversation(owner=user)
    plan = Planned(f"[{n}]", conversation, created, updated)
    for node_id in branch:
        message = record.mapping[node_id].message
        if message is None:
            continue  # the root holds no message
        text, reason, attachments = _chatgpt_text(message)
        plan.left_out[ATTACHMENTS] += attachments
        if reason:
            plan.left_out[reason] += 1
            continue
        try:
            _storable(text)
        except PydanticCustomError as exc:
            problems.append(Problem((n, "mapping", node_id, "message", "content", "parts"), exc.message()))
            continue
        metadata = message.metadata or {}
        finish = metadata.get("finish_details")
        # Anything may be there in a file; only a known string names a finish reason.
        finish_type = finish.get("type") if isinstance(finish, dict) else None
        model = metadata.get("model_slug") if message.author.role == "assistant" else None
        saved = Message(
            role=message.author.role,
            content=text,
            model_name=model[:MODEL_NAME_LENGTH] if isinstance(model, str) else "",
            finish_reason=FINISH_REASONS.get(finish_type, "") if isinstance(finish_type, str) else "",
        )
        # Never earlier than the message before it: the site orders a conversation by time, and
        # ChatGPT can date an answer before the edited prompt it answers.
        at = max(_time(message.create_time, created), plan.messages[-1][1] if plan.messages else created)
        plan.messages.append((saved, at, at))
    on_branch = set(branch)
    plan.left_out[OTHER_BRANCHES] += sum(
        1
        for node_id, node in record.mapping.items()
        if node_id not in on_branch and node.message is not None and _chatgpt_text(node.message)[1] is None
    )
    title = rules.tidy_title(record.title or "")
    if not title and plan.messages:
        title = rules.title_from_prompt(plan.messages[0][0].content)  # as a turn names a conversation
    conversation.title = title[:TITLE_LENGTH]
    plan.left_out = +plan.left_out  # only the reasons that happened
    if not plan.messages:
        plan.refused = "no text to import"
    return plan


def _chatgpt_text(message: ChatGPTMessage) -> tuple[str, str | None, int]:
    """The text a person saw of a message, why it is left out if it is, and how many attachments it had."""
    metadata = message.metadata or {}
    if (
        message.author.role not in ("user", "assistant")
        or metadata.get("is_visually_hidden_from_conversation")
        or message.recipient not in (None, "all")  # a call to a tool, not an answer
        or message.channel not in (None, "final")  # reasoning and commentary
    ):
        return "", NOT_SHOWN, 0
    if message.content.content_type not in ("text", "multimodal_text"):
        return "", NOT_TEXT, 0
    parts = message.content.parts or []
    texts = [part for part in parts if isinstance(part, str)]
    attachments = len(parts) - len(texts)
    text = "\n".join(texts)
    if not text.strip():
        return "", EMPTY, attachments
    return text, None, attachments


# --- Saving -------------------------------------------------------------------------------------


def _save(planned: list[Planned]) -> None:
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


def _link(plan: Planned) -> None:
    saved = [message for message, _, _ in plan.messages]
    parents = plan.parents if plan.parents is not None else [None, *range(len(saved) - 1)]
    for message, parent in zip(saved, parents, strict=True):
        message.parent = None if parent is None else saved[parent]
    tip = plan.tip if plan.tip is not None else len(saved) - 1
    plan.conversation.branch_tip = saved[tip] if saved else None
