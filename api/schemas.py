"""What the API's doors accept and return, checked by the same rules as the chat page's form.

Inputs are strict (a number is not a string, a flag is not 1) and refuse unknown fields, so that a
typo such as `temprature` is an error rather than a silently ignored setting. The values are checked
by chat/rules.py when a request arrives, so the bounds follow the settings the site runs with; the
OpenAPI schema states them as they were at start-up.
"""

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Self

from django.conf import settings
from django.core.exceptions import ValidationError
from ninja import Schema
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from chat import attachments, rules
from chat.models import MAX_ID as MAX_ID  # for api/rest.py and api/workflows.py
from chat.models import Attachment, Conversation, Message


def checked_by[T](rule: Callable[[T], T]) -> AfterValidator:
    """A rule of chat/rules.py as a validator: its message becomes the field's error."""

    def validate(value: T) -> T:
        try:
            return rule(value)
        except ValidationError as exc:
            # The message as a parameter, not a template: a template's braces would be read.
            raise PydanticCustomError(exc.code or "invalid", "{message}", {"message": exc.messages[0]}) from None

    return AfterValidator(validate)


def _integral(value: Any) -> Any:
    # JSON Schema, and so the OpenAPI schema, counts 64.0 as an integer.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bounded(bounds: rules.Bounds) -> dict[str, float]:
    return {"minimum": bounds.low, "maximum": bounds.high}


# The rules check the values, with the page's messages; the schema states them.
Prompt = Annotated[
    str,
    checked_by(rules.clean_prompt),
    Field(
        description="The message to answer. Surrounding whitespace is dropped.",
        # Not blank, and no NUL (which PostgreSQL's text cannot hold): refused with 422 either way.
        json_schema_extra={
            "minLength": 1,
            "maxLength": settings.CHAT_MAX_PROMPT_CHARS,
            "pattern": r"^[^\u0000]*\S[^\u0000]*$",
        },
    ),
]
SystemPrompt = Annotated[
    str, checked_by(rules.clean_system_prompt), Field(json_schema_extra={"maxLength": settings.CHAT_MAX_PROMPT_CHARS})
]
Title = Annotated[str, checked_by(rules.clean_title), Field(json_schema_extra={"maxLength": rules.TITLE_LENGTH})]
NewTitle = Annotated[
    str,
    checked_by(rules.clean_new_title),
    Field(json_schema_extra={"minLength": 1, "maxLength": rules.TITLE_LENGTH, "pattern": r"\S"}),
]
Temperature = Annotated[
    float,
    checked_by(rules.TEMPERATURE.check),
    Field(description="Randomness of the answer.", json_schema_extra=_bounded(rules.TEMPERATURE)),
]
TopP = Annotated[float, checked_by(rules.TOP_P.check), Field(json_schema_extra=_bounded(rules.TOP_P))]
MaxTokens = Annotated[
    int,
    BeforeValidator(_integral),
    # Against the widest model here; GenerationSettings checks it against the model a request names.
    checked_by(lambda value: rules.max_tokens_of_any_model().check(value)),
    Field(description="The longest answer, in tokens.", json_schema_extra=_bounded(rules.max_tokens())),
]

ModelName = Annotated[
    str,
    Field(
        max_length=200,
        description="The model that answers, as `GET /v1/models` lists it; empty: the site's default model.",
    ),
]

# Request bodies: strict types, no unknown fields.
STRICT = ConfigDict(strict=True, extra="forbid")


class GenerationSettings(Schema):
    model_config = STRICT

    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    top_p: TopP | None = None
    model: ModelName | None = None

    @model_validator(mode="after")
    def _fits_the_model(self) -> Self:
        if self.max_tokens is not None and self.model:
            try:
                rules.max_tokens(self.model).check(self.max_tokens)
            except ValidationError as exc:
                raise PydanticCustomError("range", "{message}", {"message": exc.messages[0]}) from None
        return self

    def apply_to(self, conversation: Conversation) -> None:
        conversation.change_settings(
            temperature=self.temperature, max_tokens=self.max_tokens, top_p=self.top_p, model=self.model
        )


Id = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_integral)]


class ConversationIn(GenerationSettings):
    title: Title = ""
    system_prompt: SystemPrompt | None = Field(None, description="Empty: none (or the preset's)")
    preset_id: Id | None = Field(
        None, description="A preset (`GET /api/presets`) to start with; the settings given here override its own."
    )


class ConversationChange(GenerationSettings):
    title: NewTitle | None = Field(None, description="A new title: renames the conversation.")
    system_prompt: SystemPrompt | None = None
    pinned: bool | None = Field(None, description="Kept at the top of the sidebar.")
    folder_id: Id | None = Field(
        None, description="Moves it into this folder (`GET /api/folders`); `null`: out of any folder."
    )
    archived: bool | None = Field(None, description="Out of the sidebar and the default list; still searchable.")


Stream = Annotated[
    bool, Field(description="Answer as Server-Sent Events (`delta`, then `done` or `error`) instead of JSON.")
]
MessageId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_integral)]


# Files uploaded with POST /api/files, by id, sent with the prompt (at most CHAT_FILES_PER_PROMPT).
FileIds = Annotated[
    list[str],
    Field(
        default_factory=list,
        max_length=100,
        description="Ids of files uploaded with `POST /api/files`, sent with the prompt: the model reads their text.",
    ),
]


class MessageIn(GenerationSettings):
    prompt: Prompt
    files: FileIds
    parent_id: MessageId | None = Field(
        None,
        description="The message the prompt follows, which starts a new branch if other messages follow it too. "
        "By default, the last message of the branch shown.",
    )
    stream: Stream = False


class EditIn(GenerationSettings):
    prompt: Prompt = Field(description="The prompt to send in place of the edited one.")
    stream: Stream = False


class RegenerateIn(GenerationSettings):
    stream: Stream = False


class FileOut(Schema):
    id: uuid.UUID
    name: str
    size: int
    kind: str = Field(description="text, markdown, csv, json, code, pdf, docx or html")
    pages: int | None = Field(description="A PDF's pages")
    chars: int = Field(description="The characters of text read from it: what the model reads")

    @staticmethod
    def resolve_chars(attachment: object) -> Any:
        # An attachment; or, validated again inside a MessageOut's, a FileOut or its dump.
        if isinstance(attachment, Attachment):
            return len(attachment.text)
        return attachment["chars"] if isinstance(attachment, dict) else getattr(attachment, "chars", 0)


class FileCutOut(Schema):
    name: str
    used_pages: int | None = None
    pages: int | None = None
    used_chars: int | None = None
    chars: int | None = None


class MessageOut(Schema):
    id: int
    role: str
    content: str
    status: str = Field(description="streaming, complete, stopped, error or interrupted")
    finish_reason: str
    error: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model_name: str
    time_to_first_token: float | None = Field(description="Seconds")
    duration: float | None = Field(description="Seconds")
    tokens_per_second: float | None = Field(
        description="The answer's tokens over the time after the first came (that wait is `time_to_first_token`)"
    )
    parent_id: int | None = Field(
        description="The prompt an answer answers, the answer a prompt follows; null for a conversation's first prompts"
    )
    created_at: datetime
    updated_at: datetime
    files: list[FileOut] = Field(description="A prompt's files (`POST /api/files`), in the order they were attached")
    files_cut: list[FileCutOut] = Field(
        description="An answer's: what of each of its prompt's files the model read, when not all of it fitted"
    )

    @staticmethod
    def resolve_files(message: object) -> list[Attachment] | Any:
        # A message; or a MessageOut, or its dump (ShownMessageOut), whose files are resolved already.
        if isinstance(message, Message):
            return attachments.files_read_with(message)
        return message["files"] if isinstance(message, dict) else getattr(message, "files", [])


class ShownMessageOut(MessageOut):
    versions: list[int] = Field(
        description="The ids of this message and its siblings (its regenerated answers, or its edited prompts), "
        "oldest first. `POST .../messages/{id}/show` shows another."
    )


class ConversationOut(Schema):
    id: int
    title: str
    system_prompt: str
    temperature: float
    max_tokens: int
    top_p: float
    model: str = Field(description="The model that answers; empty: the site's default model")
    created_at: datetime
    updated_at: datetime
    pinned: bool
    folder_id: int | None
    archived_at: datetime | None = Field(description="When it was archived; null: it is not")


class ConversationDetail(ConversationOut):
    branch_tip_id: int | None = Field(description="The last message of the branch shown; the next prompt follows it")
    messages: list[ShownMessageOut] = Field(description="The branch shown, from the first prompt to `branch_tip_id`")
    tree: list[MessageOut] | None = Field(
        None, description="With `?tree=true`: every message, of every branch, in the order they were written"
    )


class TurnOut(Schema):
    conversation_id: int
    prompt: MessageOut
    answer: MessageOut


class FieldError(Schema):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(Schema):
    detail: str
    errors: list[FieldError] | None = None


# What any API route may answer besides its success.
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut}
# ... and a route that may find what the caller has in the way: a folder's name taken, a limit reached.
CONFLICTS = {**ERRORS, 409: ErrorOut}
# ... and a route that starts an answer: 429 (with Retry-After) over the caller's limits (chat/limits.py).
STARTS_AN_ANSWER = {**ERRORS, 429: ErrorOut}


# --- model-compose's workflow run -------------------------------------------------------------


class WorkflowInput(GenerationSettings):
    """The seed workflow's input: `prompt` and `temperature` (the site's default, 0.7, when not
    given), plus the `max_tokens` and `top_p` its README lets one add, and the `model` to ask."""

    prompt: Prompt
    files: FileIds


class WorkflowRunIn(Schema):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        # As model-compose: output_only needs wait_for_completion (checked by the route).
        json_schema_extra={
            "not": {
                "required": ["output_only", "wait_for_completion"],
                "properties": {"output_only": {"const": True}, "wait_for_completion": {"const": False}},
            }
        },
    )

    workflow_id: str | None = Field(None, description='"__default__" or omitted: the one workflow there is.')
    input: WorkflowInput
    wait_for_completion: bool = Field(
        True, description="True: the answer as it is generated (sse-text). False: a task to poll at /api/tasks/{id}."
    )
    output_only: bool = Field(False, description="Accepted as model-compose does; requires wait_for_completion.")
    # model-compose accepts these too; this site has no use for them.
    session_id: str | None = None
    metadata: dict[str, Any] | None = None


class TaskOut(Schema):
    task_id: str
    status: str = Field(description="pending, processing, completed, failed or cancelled")
    output: str | None = Field(
        description="The answer's text: whole once the task has ended; while it is processing, the text so far."
    )
    error: str | None
    model: str = Field("", description="The model that answers, as vLLM names it (empty if none did).")


class TaskStarted(Schema):
    task_id: str
    status: str


class WorkflowVariable(Schema):
    name: str | None
    type: str
    subtype: str | None = None
    format: str | None = None
    default: Any = None
    required: bool = False


class WorkflowOut(Schema):
    workflow_id: str
    title: str
    description: str
    default: bool
    input: list[WorkflowVariable]
    output: list[WorkflowVariable]
