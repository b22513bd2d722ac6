"""chat.import_site: `_read_site_export`, this site's own JSON export (chat/exports.py) read back as planned.

Ids in the file only link messages to their parents and a conversation to its branch shown; owners
and ids are never used.
"""

from typing import Annotated, Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from chat import folders, rules
from chat.import_checks import (
    FINISH_REASON_LENGTH,
    MAX_COUNT,
    MODEL_NAME_LENGTH,
    TITLE_LENGTH,
    ImportRefused,
    Planned,
    Problem,
    Text,
    _problems,
    _storable,
    _within,
)
from chat.import_files import SiteFile
from chat.models import Conversation, Message

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
    files: Annotated[list[SiteFile], Field(max_length=100)] = []  # a prompt's (chat/import_files.py)
    files_cut: Annotated[list[dict[str, str | int]], Field(max_length=100)] = []  # an answer's


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
            message = Message(**m.model_dump(exclude={"id", "parent_id", "created_at", "updated_at", "files"}))
            if m.files:
                plan.files[len(plan.messages)] = m.files
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
