"""chat.import_checks: `Problem`, `ImportRefused` and `Planned`, what both readers of an import file share.

Every problem is listed with where it is in the file (up to MAX_PROBLEMS), and nothing is imported
when there is one. Text fields are checked to be storable (no NUL, no lone surrogate), and
generation settings to be within the page's bounds (chat/rules.py), as they are read.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext, ngettext
from pydantic import AfterValidator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from chat import rules
from chat.models import Conversation, Message

TITLE_LENGTH = Conversation._meta.get_field("title").max_length
MODEL_NAME_LENGTH = Message._meta.get_field("model_name").max_length
FINISH_REASON_LENGTH = Message._meta.get_field("finish_reason").max_length
MAX_COUNT = 2**31 - 1  # what a PositiveIntegerField holds on every database
# Problems listed in full before "and N more": enough to fix a file, not a wall of text.
MAX_PROBLEMS = 50


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
    # A prompt's files (chat/import_files.py's SiteFile), by the prompt's place in `messages`.
    files: dict[int, list[Any]] = field(default_factory=dict)
    refused: str = ""  # why the conversation is not imported at all, if it is not


Text = Annotated[str, AfterValidator(_storable)]
