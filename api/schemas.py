"""What the API's doors accept and return, within the same bounds as the chat page's form.

Inputs are strict (a number is not a string, a flag is not 1) and refuse unknown fields, so that a
typo such as `temprature` is an error rather than a silently ignored setting. The bounds that follow
the settings (prompt length, context length) are checked when a request arrives, so they follow the
settings the site runs with; the OpenAPI schema states them as they were at start-up.
"""

import math
from datetime import datetime
from typing import Annotated, Any

from django.conf import settings
from ninja import Schema
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from chat.models import TEMPERATURE_RANGE, TOP_P_RANGE, Conversation, max_tokens_range, out_of_range

TITLE_LENGTH = Conversation._meta.get_field("title").max_length
# The largest id SQLite and PostgreSQL store: a larger one is refused, not an overflow.
MAX_ID = 2**63 - 1


def _text(value: str) -> str:
    # A lone surrogate cannot be stored as UTF-8; json.loads lets one through from "\ud800".
    try:
        value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError("unicode", "Must be valid Unicode text.") from None
    return value


def clean_prompt(value: str) -> str:
    # The length as sent, as the schema states it; then, as the page's form does, surrounding
    # whitespace is dropped, and nothing left is no prompt.
    limit = settings.CHAT_MAX_PROMPT_CHARS
    if len(value) > limit:
        raise PydanticCustomError(
            "prompt_too_long",
            "This message is too long: at most {limit} characters (it has {length}).",
            {"limit": limit, "length": len(value)},
        )
    if not (value := _text(value).strip()):
        raise PydanticCustomError("prompt_empty", "Type a message first: the prompt is empty.")
    return value


def clean_system_prompt(value: str) -> str:
    limit = settings.CHAT_MAX_PROMPT_CHARS
    if len(value) > limit:
        raise PydanticCustomError(
            "system_prompt_too_long", "The system prompt is too long: at most {limit} characters.", {"limit": limit}
        )
    return _text(value).strip()


def _title(value: str) -> str:
    return " ".join(_text(value).split())


def _new_title(value: str) -> str:
    if not (value := _title(value)):
        raise PydanticCustomError("title_empty", "A title cannot be empty.")
    return value


def _between(label: str, low: float, high: float):
    def check(value: float) -> float:
        if math.isnan(value) or not low <= value <= high:
            raise PydanticCustomError("range", out_of_range(label, low, high))
        return value

    return check


def _integral(value: Any) -> Any:
    # JSON Schema, and so the OpenAPI schema, counts 64.0 as an integer.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _max_tokens(value: int) -> int:
    low, high = max_tokens_range()
    if not low <= value <= high:
        raise PydanticCustomError("range", out_of_range("Max tokens", low, high))
    return value


# The bounds are checked by the validators above, with the page's messages; the schema states them.
Prompt = Annotated[
    str,
    AfterValidator(clean_prompt),
    Field(
        description="The message to answer. Surrounding whitespace is dropped.",
        json_schema_extra={"minLength": 1, "maxLength": settings.CHAT_MAX_PROMPT_CHARS, "pattern": r"\S"},
    ),
]
SystemPrompt = Annotated[
    str, AfterValidator(clean_system_prompt), Field(json_schema_extra={"maxLength": settings.CHAT_MAX_PROMPT_CHARS})
]
# The length limit first: it applies to the title as sent, before its whitespace is tidied.
Title = Annotated[str, Field(max_length=TITLE_LENGTH), AfterValidator(_title)]
NewTitle = Annotated[
    str,
    Field(max_length=TITLE_LENGTH),
    AfterValidator(_new_title),
    Field(json_schema_extra={"minLength": 1, "pattern": r"\S"}),
]
Temperature = Annotated[
    float,
    AfterValidator(_between("Temperature", *TEMPERATURE_RANGE)),
    Field(
        description="Randomness of the answer.",
        json_schema_extra={"minimum": TEMPERATURE_RANGE[0], "maximum": TEMPERATURE_RANGE[1]},
    ),
]
TopP = Annotated[
    float,
    AfterValidator(_between("Top p", *TOP_P_RANGE)),
    Field(json_schema_extra={"minimum": TOP_P_RANGE[0], "maximum": TOP_P_RANGE[1]}),
]
MaxTokens = Annotated[
    int,
    BeforeValidator(_integral),
    AfterValidator(_max_tokens),
    Field(
        description="The longest answer, in tokens.",
        json_schema_extra={"minimum": max_tokens_range()[0], "maximum": max_tokens_range()[1]},
    ),
]

# Request bodies: strict types, no unknown fields.
STRICT = ConfigDict(strict=True, extra="forbid")


class GenerationSettings(Schema):
    model_config = STRICT

    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    top_p: TopP | None = None

    def apply_to(self, conversation: Conversation) -> None:
        for name in ("temperature", "max_tokens", "top_p"):
            if (value := getattr(self, name)) is not None:
                setattr(conversation, name, value)


class ConversationIn(GenerationSettings):
    title: Title = ""
    system_prompt: SystemPrompt = ""


class ConversationChange(GenerationSettings):
    title: NewTitle | None = Field(None, description="A new title: renames the conversation.")
    system_prompt: SystemPrompt | None = None


class MessageIn(GenerationSettings):
    prompt: Prompt
    stream: bool = Field(
        False, description="Answer as Server-Sent Events (`delta`, then `done` or `error`) instead of JSON."
    )


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
    created_at: datetime
    updated_at: datetime


class ConversationOut(Schema):
    id: int
    title: str
    system_prompt: str
    temperature: float
    max_tokens: int
    top_p: float
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


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


# --- model-compose's workflow run -------------------------------------------------------------


class WorkflowInput(GenerationSettings):
    """The seed workflow's input: `prompt` and `temperature` (the site's default, 0.7, when not
    given), plus the `max_tokens` and `top_p` its README lets one add."""

    prompt: Prompt


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
