"""A person's limits on answers (chat/limits.py), where every door meets them: starting a turn."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat import turns
from chat.limits import TooManyAnswers
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limits(settings):
    def set_limits(*, at_once: int = 0, per_minute: int = 0, exempt_superusers: bool = True) -> None:
        settings.CHAT_MAX_ANSWERS_AT_ONCE = at_once
        settings.CHAT_MAX_ANSWERS_PER_MINUTE = per_minute
        settings.CHAT_LIMITS_EXEMPT_SUPERUSERS = exempt_superusers

    return set_limits


async def stored_messages() -> list[tuple[int, str, str]]:
    return [(m.conversation_id, m.role, m.content) async for m in Message.objects.order_by("pk")]


async def test_a_second_answer_at_once_is_refused_and_saves_nothing(alice, fake_vllm, limits):
    limits(at_once=1)
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    conversation = Conversation(owner=alice)
    _, first = await turns.start_turn(conversation, "First")
    before = await stored_messages()

    changed = await Conversation.objects.aget(pk=conversation.pk)
    changed.temperature = 0.1
    with pytest.raises(TooManyAnswers) as refused:
        await turns.start_turn(changed, "Second")
    with pytest.raises(TooManyAnswers):
        await turns.start_turn(Conversation(owner=alice), "In a new conversation")
    with pytest.raises(TooManyAnswers):
        # The /v1 door's earlier messages are not saved either.
        await turns.start_turn(Conversation(owner=alice), "Third", earlier=[("user", "Hi"), ("assistant", "Hello")])

    assert refused.value.message == (
        "You already have 1 answer being generated, the most at once. "
        "Send this when one of them has finished (or stop one)."
    )
    assert refused.value.retry_after == 5
    assert await stored_messages() == before
    assert await Conversation.objects.acount() == 1
    assert (await Conversation.objects.aget(pk=conversation.pk)).temperature == 0.7

    # Once the first has ended there is room again.
    await turns.stop_turn(first)
    _, second = await turns.start_turn(changed, "Second")
    await turns.stop_turn(second)


async def test_answers_started_in_the_last_minute_are_counted_and_the_wait_is_told(alice, fake_vllm, limits):
    limits(per_minute=2)
    conversation = await Conversation.objects.acreate(owner=alice)
    # Two answers, one started 50 seconds ago and one 70 seconds ago: only the first counts.
    for seconds_ago in (70, 50):
        answer = await Message.objects.acreate(
            conversation=conversation, role="assistant", content="Old", worker="worker.elsewhere.1.abcd"
        )
        await Message.objects.filter(pk=answer.pk).aupdate(created_at=timezone.now() - timedelta(seconds=seconds_ago))
    _, allowed = await turns.start_turn(conversation, "One more")
    await turns.stop_turn(allowed)

    with pytest.raises(TooManyAnswers) as refused:
        await turns.start_turn(conversation, "And another")

    # Room comes back when the one from 50 seconds ago is a minute old.
    assert 8 <= refused.value.retry_after <= 11
    assert refused.value.message == (
        "You have started 2 answers in the last minute, the most allowed. "
        f"Try again in {refused.value.retry_after} seconds."
    )


async def test_history_brought_by_a_request_or_an_import_is_not_answers_started(alice, fake_vllm, limits):
    # The /v1 door saves the earlier messages a client sends, answers among them, and an import
    # saves answers too: none of them is an answer the site started for the person.
    limits(per_minute=2)
    history = [("user", f"Question {n}") if n % 2 == 0 else ("assistant", f"Answer {n}") for n in range(10)]
    for _ in range(2):
        _, answer = await turns.start_turn(Conversation(owner=alice), "Go on", earlier=history)
        await turns.stop_turn(answer)

    with pytest.raises(TooManyAnswers):  # the two started are the most
        await turns.start_turn(Conversation(owner=alice), "And another", earlier=history)
    assert await Message.objects.filter(role="assistant").acount() == 2 * (5 + 1)


async def test_another_persons_answers_do_not_count(alice, bob, fake_vllm, limits):
    limits(at_once=1, per_minute=1)
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    _, alices = await turns.start_turn(Conversation(owner=alice), "Mine")

    _, bobs = await turns.start_turn(Conversation(owner=bob), "Mine too")

    assert bobs.is_streaming
    for answer in (alices, bobs):
        await turns.stop_turn(answer)


async def test_superusers_are_exempt_unless_the_setting_says_not(django_user_model, fake_vllm, limits):
    admin = await django_user_model.objects.acreate_superuser("root", password="x")
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    limits(at_once=1)
    started = [(await turns.start_turn(Conversation(owner=admin), f"Prompt {n}")).answer for n in range(3)]

    limits(at_once=1, exempt_superusers=False)
    with pytest.raises(TooManyAnswers):
        await turns.start_turn(Conversation(owner=admin), "One too many")
    for answer in started:
        await turns.stop_turn(answer)


async def test_zero_means_no_limit(alice, fake_vllm, limits):
    limits(at_once=0, per_minute=0)
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    started = [(await turns.start_turn(Conversation(owner=alice), f"Prompt {n}")).answer for n in range(25)]
    assert all(answer.is_streaming for answer in started)
    for answer in started:
        await turns.stop_turn(answer)
