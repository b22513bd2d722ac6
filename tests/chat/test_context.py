"""fit_context keeps the newest turns that fit beside the prompt and the answer's max_tokens.

The fake vLLM counts a token per word (chat/context.py's estimate counts a token per byte), so a
conversation can be too long by the estimate yet fit by vLLM's exact count: that gap is what
shows which count decided.
"""

import pytest

from chat.context import ContextTooLong, estimate_tokens, fit_context
from tests.fake_vllm import FakeVLLM, count_tokens

CONTEXT_LENGTH = 300
MAX_TOKENS = 100
BUDGET = CONTEXT_LENGTH - MAX_TOKENS
SYSTEM = {"role": "system", "content": "Be brief."}
PROMPT = {"role": "user", "content": "p " * 10}


def words(letter: str, count: int) -> str:
    return " ".join([letter] * count)


def turns(count: int) -> list[dict[str, str]]:
    """`count` turns of 25 tokens per message for the fake vLLM, about twice that by the estimate."""
    earlier = []
    for turn in range(count):
        earlier.append({"role": "user", "content": words(f"q{turn}", 20)})
        earlier.append({"role": "assistant", "content": words(f"a{turn}", 20)})
    return earlier


async def fit(earlier, *, system_prompt=SYSTEM["content"], prompt=PROMPT["content"], max_tokens=MAX_TOKENS):
    return await fit_context(
        system_prompt=system_prompt,
        earlier=earlier,
        prompt=prompt,
        max_tokens=max_tokens,
        context_length=CONTEXT_LENGTH,
    )


async def test_a_conversation_that_fits_by_the_estimate_is_sent_whole_without_asking_vllm(fake_vllm: FakeVLLM):
    earlier = turns(1)

    fitted = await fit(earlier)

    assert fitted.messages == [SYSTEM, *earlier, PROMPT]
    assert fitted.dropped_turns == 0
    assert fake_vllm.tokenize_requests == []


async def test_without_a_system_prompt_no_system_message_is_sent(fake_vllm: FakeVLLM):
    earlier = turns(1)

    fitted = await fit(earlier, system_prompt="")

    assert fitted.messages == [*earlier, PROMPT]


async def test_vllms_exact_count_decides_when_the_estimate_says_too_long(fake_vllm: FakeVLLM):
    earlier = turns(3)
    whole = [SYSTEM, *earlier, PROMPT]
    assert estimate_tokens(whole) > BUDGET >= count_tokens(whole)

    fitted = await fit(earlier)

    assert fitted.messages == whole
    assert fitted.dropped_turns == 0
    assert fake_vllm.tokenize_requests == [{"model": "qwen2-7b-instruct", "messages": whole}]


async def test_the_oldest_whole_turns_are_dropped_first_and_no_more_than_needed(fake_vllm: FakeVLLM):
    earlier = turns(5)

    fitted = await fit(earlier)

    assert fitted.messages == [SYSTEM, *earlier[4:], PROMPT]
    assert fitted.dropped_turns == 2
    assert count_tokens(fitted.messages) <= BUDGET < count_tokens([SYSTEM, *earlier[2:], PROMPT])


async def test_the_estimate_decides_when_vllm_is_down(fake_vllm: FakeVLLM):
    fake_vllm.fault = "refuse"
    earlier = turns(3)

    fitted = await fit(earlier)

    assert fitted.messages == [SYSTEM, *earlier[4:], PROMPT]
    assert fitted.dropped_turns == 2
    assert estimate_tokens(fitted.messages) <= BUDGET < estimate_tokens([SYSTEM, *earlier[2:], PROMPT])


async def test_a_turn_with_several_answers_is_dropped_whole(fake_vllm: FakeVLLM):
    fake_vllm.fault = "refuse"
    earlier = [
        {"role": "user", "content": words("q", 20)},
        {"role": "assistant", "content": words("a", 20)},
        {"role": "assistant", "content": words("b", 20)},
        {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Yes."},
    ]

    fitted = await fit(earlier)

    assert fitted.messages == [SYSTEM, *earlier[3:], PROMPT]
    assert fitted.dropped_turns == 1


async def test_every_turn_may_go_but_never_the_system_prompt_or_the_new_prompt(fake_vllm: FakeVLLM):
    prompt = words("p", 150)  # 155 tokens for the fake vLLM: nothing else fits beside it

    fitted = await fit(turns(2), prompt=prompt)

    assert fitted.messages == [SYSTEM, {"role": "user", "content": prompt}]
    assert fitted.dropped_turns == 2


@pytest.mark.parametrize("fault", [None, "refuse"])
async def test_a_prompt_that_cannot_fit_alone_is_refused_with_the_numbers(fake_vllm: FakeVLLM, fault):
    fake_vllm.fault = fault
    prompt = words("p", 250)
    needed = count_tokens([SYSTEM, {"role": "user", "content": prompt}])
    if fault == "refuse":
        needed = estimate_tokens([SYSTEM, {"role": "user", "content": prompt}])

    with pytest.raises(ContextTooLong) as refused:
        await fit(turns(2), prompt=prompt)

    assert str(refused.value) == (
        f"This message is too long for the model's 300-token context: it needs about {needed} tokens, "
        "and 200 fit with room for a 100-token answer. Shorten it, or ask for fewer tokens."
    )


@pytest.mark.parametrize("max_tokens", [CONTEXT_LENGTH, CONTEXT_LENGTH + 1])
async def test_max_tokens_that_fill_the_context_are_refused_before_counting(fake_vllm: FakeVLLM, max_tokens):
    with pytest.raises(ContextTooLong) as refused:
        await fit([], prompt="Hi", max_tokens=max_tokens)

    assert str(refused.value) == (
        f"Max tokens ({max_tokens}) leaves no room for a prompt in the model's 300-token context. Ask for fewer tokens."
    )
    assert fake_vllm.tokenize_requests == []
