"""engine.vllm_events: the typed events of a chat completion, `TextDelta`, `Finished`, `Usage`, `Failed`.

Everything above the vLLM client sees these, never SSE lines or vLLM's JSON: every failure,
whatever its shape on the wire, becomes one `Failed` with a message written for the person reading
the chat.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str  # "stop" or "length", as vLLM says


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    # Nothing came from the model: no connection, or it broke (or a gateway said 502/503/504)
    # before the first delta. Such an answer may be asked again of another replica.
    unreachable: bool = False


type Event = TextDelta | Finished | Usage | Failed


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    temperature: float
    max_tokens: int
    top_p: float
