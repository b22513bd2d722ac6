"""chat.turn_events: what a follower of a turn gets, `TurnDelta`s then one `TurnEnded`; and the
`Turn` a start gives back.

The page, the REST API, the OpenAI endpoint and the CLI stream these, whichever worker generates
the answer (chat/turns.py `follow`).
"""

from dataclasses import dataclass
from typing import NamedTuple

from chat.models import Message
from engine.vllm_client import TextDelta


@dataclass(frozen=True, slots=True)
class TurnDelta(TextDelta):
    """A delta as a follower gets it: with the character offset in the answer where it starts, so
    that a client that reconnects can say how much it has (SSE's Last-Event-ID)."""

    offset: int = 0


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The last event a follower sees: the answer as stored, in its final status."""

    message: Message


type TurnEvent = TextDelta | TurnEnded


class Turn(NamedTuple):
    """A started turn: its prompt and its answer (chat/turns.py `start_turn`, `edit_prompt`, `regenerate`)."""

    prompt: Message
    answer: Message


class NoPrompt(Exception):
    """The answer follows no prompt (it was saved so, e.g. from an OpenAI request's history)."""
