"""What the chat accepts from a person, whichever door they come by.

A prompt, a system prompt, a conversation's title and its generation settings are checked here
and nowhere else: the page's forms (chat/forms.py) and the API's schemas (api/schemas.py) both call
these rules, so a person reads the same message for the same mistake on the page, in the REST API,
from the CLI and from an OpenAI SDK. A rule raises Django's ValidationError; each door words it in
its own shape.

The bounds that follow the settings (prompt length) or the model vLLM serves (context length) are
read when a rule runs, so they follow the settings the site runs with (and tests' overrides).
"""

import math
import re
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_lazy

from engine import catalog, vllm_client

# The longest title a person may give a conversation (the database column's size).
TITLE_LENGTH = 200
# A conversation with no title is named after its first prompt, cut shorter than TITLE_LENGTH so
# that it fits on one line of the sidebar.
AUTO_TITLE_LENGTH = 60


def storable(text: str) -> str:
    """The text, if any database can store it; every door refuses text that none can."""
    # A lone surrogate cannot be stored as UTF-8 (json.loads lets one through from "\ud800"), nor
    # can PostgreSQL store a NUL.
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValidationError(gettext("Must be valid Unicode text."), code="unicode") from None
    if "\x00" in text:
        raise ValidationError(gettext("Null characters are not allowed."), code="null_characters")
    return text


def clean_prompt(text: str) -> str:
    """The prompt to send: at most CHAT_MAX_PROMPT_CHARS as typed, without surrounding whitespace."""
    limit = settings.CHAT_MAX_PROMPT_CHARS
    if len(text) > limit:
        raise ValidationError(
            gettext("This message is too long: at most %(limit)s characters (it has %(length)s).")
            % {"limit": limit, "length": len(text)},
            code="prompt_too_long",
        )
    if not (text := storable(text).strip()):
        raise ValidationError(gettext("Type a message first."), code="prompt_empty")
    return text


def clean_system_prompt(text: str) -> str:
    limit = settings.CHAT_MAX_PROMPT_CHARS
    if len(text) > limit:
        raise ValidationError(
            gettext("The system prompt is too long: at most %(limit)s characters.") % {"limit": limit},
            code="system_prompt_too_long",
        )
    return storable(text).strip()


def tidy_title(text: str) -> str:
    """A title on one line, its runs of whitespace made single spaces."""
    return " ".join(text.split())


def clean_title(text: str) -> str:
    """A title as given, tidied; it may be empty (the first prompt will name the conversation)."""
    # The length as sent, as the API's schema states it, before the whitespace is tidied.
    if len(text) > TITLE_LENGTH:
        raise ValidationError(
            gettext("This title is too long: at most %(limit)s characters (it has %(length)s).")
            % {"limit": TITLE_LENGTH, "length": len(text)},
            code="title_too_long",
        )
    return tidy_title(storable(text))


def clean_new_title(text: str) -> str:
    """A title that renames a conversation: unlike a first title, it cannot be empty."""
    if not (title := clean_title(text)):
        raise ValidationError(gettext("A title cannot be empty."), code="title_empty")
    return title


def title_from_prompt(prompt: str) -> str:
    # Stripped again after the cut, which may land just after a space.
    return tidy_title(prompt)[:AUTO_TITLE_LENGTH].rstrip()


# What may wrap or end a model's title ("Title: «Trip to Busan».") but is no part of it; the
# full-width forms are the ones Korean, Chinese and Japanese text uses.
_TITLE_LABEL = re.compile(r"^\s*(title|제목)\s*[:：]\s*", re.IGNORECASE)  # noqa: RUF001
_TITLE_WRAPPING = "\"'`“”‘’«»「」『』《》〈〉*#_ "  # noqa: RUF001
_TITLE_END = ".。!！?？,，;；:：…" + _TITLE_WRAPPING  # noqa: RUF001


def title_from_model(text: str) -> str:
    """The model's name for a conversation, as a title: its first line, without quotes, a label or
    end punctuation, cut to AUTO_TITLE_LENGTH; empty when nothing is left."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    title = _TITLE_LABEL.sub("", tidy_title(lines[0]))
    title = title.strip(_TITLE_WRAPPING).rstrip(_TITLE_END)
    return title[:AUTO_TITLE_LENGTH].rstrip()


@dataclass(frozen=True)
class Bounds:
    """The range a generation setting must lie in, and what a person is told otherwise."""

    label: str | Promise  # in the reader's language when a message is made
    low: float
    high: float

    @property
    def message(self) -> str:
        return gettext("%(setting)s must be between %(low)s and %(high)s.") % {
            "setting": self.label,
            "low": _number(self.low),
            "high": _number(self.high),
        }

    @property
    def not_a_number(self) -> str:
        return gettext("%(setting)s must be a number.") % {"setting": self.label}

    def check[N: (int, float)](self, value: N) -> N:
        if math.isnan(value) or not self.low <= value <= self.high:
            raise ValidationError(self.message, code="range")
        return value


def _number(value: float) -> str:
    # "0.01" and "2", not "2.0"; and an integer whole, not "1.04858e+06" as `:g` would write it.
    return f"{value:g}" if isinstance(value, float) else str(value)


# The generation settings' bounds: the ones vLLM accepts.
TEMPERATURE = Bounds(gettext_lazy("Temperature"), 0.0, 2.0)
TOP_P = Bounds(gettext_lazy("Top p"), 0.01, 1.0)


def max_tokens(model: str = "") -> Bounds:
    """Bounds of max_tokens for `model` (empty: the default model), as its engine last listed it."""
    # Read when asked, so it follows the model served. The answer must leave room for at least
    # one prompt token in the context window.
    served = (catalog.known(model) if model else None) or vllm_client.known_model()
    return Bounds(gettext_lazy("Max tokens"), 1, served.context_length - 1)


def max_tokens_of_any_model() -> Bounds:
    """Bounds of max_tokens for whichever model is asked: the widest of the models known (a request
    that names no model may be for a conversation on any of them; the turn checks its own)."""
    widest = max((served.context_length for served in catalog.known_models()), default=0)
    return Bounds(gettext_lazy("Max tokens"), 1, max(widest, vllm_client.known_model().context_length) - 1)
