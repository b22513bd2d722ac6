"""chat.import_chatgpt: `_read_chatgpt_export`, ChatGPT's conversations.json read into planned conversations.

ChatGPT's export (Settings → Data controls → Export data) is a zip holding `conversations.json`, a
list of conversations whose messages form a tree: `mapping` holds the nodes by id, each with its
`parent`, `children` and `message` (`author.role`, `content.content_type`, `content.parts`,
`create_time`, `metadata`). The branch ChatGPT showed, from `current_node` back to the root, is the
one imported; what this site has no place for is left out and counted by reason.
"""

from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from django.utils.translation import gettext_noop
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from chat import rules
from chat.import_checks import (
    MODEL_NAME_LENGTH,
    TITLE_LENGTH,
    ImportRefused,
    Planned,
    Problem,
    Text,
    _problems,
    _storable,
)
from chat.models import Conversation, Message

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
