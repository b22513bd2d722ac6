"""Fitting a conversation into the model's context window.

The budget for the prompt is the context length less max_tokens: vLLM refuses a request whose
prompt and answer together could overflow the window. The oldest turns are dropped first; the new
prompt and the system prompt never are.

Counting is two-stage. First an estimate that can only be too high: Qwen2's tokenizer is a
byte-level BPE, so a text never has more tokens than UTF-8 bytes, plus the chat template's few
tokens per message. Most conversations fit by that bound and cost no extra request. When the bound
says "too long", vLLM's /tokenize gives the exact length after the chat template; if vLLM cannot
tell (an older server, or one that is down), the estimate decides.
"""

from dataclasses import dataclass

from engine import catalog, vllm_client
from engine.endpoints import Endpoint

# <|im_start|>, the role's line break, <|im_end|> and the line break after it.
TEMPLATE_TOKENS_PER_MESSAGE = 4
# <|im_start|>assistant\n, which primes the answer.
ANSWER_PRIMER_TOKENS = 3
# Qwen2's template adds "You are a helpful assistant." when no system prompt is given.
DEFAULT_SYSTEM_PROMPT_TOKENS = 40


class ContextTooLong(Exception):
    """The new prompt cannot fit even with every earlier turn dropped; the text is for a person."""


@dataclass(frozen=True)
class FittedContext:
    messages: list[dict[str, str]]
    dropped_turns: int


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    total = ANSWER_PRIMER_TOKENS
    if not messages or messages[0]["role"] != "system":
        total += DEFAULT_SYSTEM_PROMPT_TOKENS
    for message in messages:
        total += TEMPLATE_TOKENS_PER_MESSAGE + len(message["role"].encode()) + len(message["content"].encode())
    return total


async def fit_context(
    *,
    system_prompt: str,
    earlier: list[dict[str, str]],
    prompt: str,
    max_tokens: int,
    context_length: int,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> FittedContext:
    """The messages to send `model` on `endpoint` (by default the default engine's), as many
    earlier turns as fit."""
    budget = context_length - max_tokens
    if budget <= 0:
        raise ContextTooLong(
            f"Max tokens ({max_tokens}) leaves no room for a prompt in the model's {context_length}-token context. "
            "Ask for fewer tokens."
        )
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    tail = [{"role": "user", "content": prompt}]
    start = 0
    dropped = 0
    while True:
        candidate = head + earlier[start:] + tail
        needed = estimate_tokens(candidate)
        if (
            needed > budget
            and (exact := await vllm_client.count_prompt_tokens(candidate, model=model, endpoint=endpoint)) is not None
        ):
            needed = exact
        if needed <= budget:
            return FittedContext(candidate, dropped)
        if start >= len(earlier):
            raise ContextTooLong(
                f"This message is too long for the model's {context_length}-token context: it needs about "
                f"{needed} tokens, and {budget} fit with room for a {max_tokens}-token answer. "
                "Shorten it, or ask for fewer tokens."
            )
        # Drop one whole turn: the oldest prompt and every answer to it.
        start += 1
        while start < len(earlier) and earlier[start]["role"] != "user":
            start += 1
        dropped += 1


async def check_prompt_fits(*, system_prompt: str, prompt: str, max_tokens: int, model: str = "") -> None:
    """Raise ContextTooLong now if no answer could ever be generated for this prompt by `model`
    (empty: the default model); engine.catalog.NoSuchModel if that model cannot be used now.

    The turn would save it as a failed answer; a door that can refuse the request instead (a new
    conversation, whose only context is the prompt) calls this first. Earlier turns are left out:
    fitting drops them all before it gives up.
    """
    chosen = await catalog.pick(model)
    await fit_context(
        system_prompt=system_prompt,
        earlier=[],
        prompt=prompt,
        max_tokens=max_tokens,
        context_length=chosen.model.context_length,
        model=chosen.model.id,
        endpoint=chosen.endpoint,
    )
