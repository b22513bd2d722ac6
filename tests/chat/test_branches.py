"""Regenerate, edit and versions: a conversation as a tree, and the branch the model is sent.

Against the fake vLLM on loopback, which records what the model was sent.
"""

import asyncio

import pytest
from django.db.backends.utils import CursorWrapper

from chat import branches, titles, turns
from chat.branches import Tree, Versions
from chat.models import Conversation, Message
from chat.turns import Turn, TurnEnded
from engine import catalog
from engine.vllm_client import TextDelta
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def conversation(alice):
    return await Conversation.objects.acreate(owner=alice, system_prompt="Be brief.")


async def ended(answer: Message) -> Message:
    async for event in turns.follow(answer):
        if isinstance(event, TurnEnded):
            return event.message
    raise AssertionError("the follower ended without TurnEnded")


async def answered(fake_vllm, started, *reply: str) -> Turn:
    """Start a turn (a coroutine of turns.start_turn, edit_prompt or regenerate) with this reply, to its end."""
    fake_vllm.reply = list(reply)
    turn = await started
    await ended(turn.answer)
    return turn


def sent_history(fake_vllm) -> list[tuple[str, str]]:
    """What the model was sent last, as (role, text) pairs."""
    return [(m["role"], m["content"]) for m in fake_vllm.requests[-1]["messages"]]


async def shown(conversation: Conversation) -> list[str]:
    await conversation.arefresh_from_db()
    return [message.content for message, _ in await branches.ashown_branch(conversation)]


async def three_turns(conversation, fake_vllm) -> list[Turn]:
    return [
        await answered(fake_vllm, turns.start_turn(conversation, "First"), "One."),
        await answered(fake_vllm, turns.start_turn(conversation, "Second"), "Two."),
        await answered(fake_vllm, turns.start_turn(conversation, "Third"), "Three."),
    ]


# --- Regenerate -----------------------------------------------------------------------------------


async def test_regenerating_answers_the_same_prompt_with_its_history_and_keeps_the_old_answer(conversation, fake_vllm):
    _first, second, third = await three_turns(conversation, fake_vllm)
    # The conversation's settings, as the panel saved them after the answer was written.
    conversation.temperature = 1.3
    await conversation.asave()

    again = await answered(fake_vllm, turns.regenerate(conversation, second.answer), "Two, ", "again.")

    assert sent_history(fake_vllm) == [
        ("system", "Be brief."),
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Second"),
    ]
    assert fake_vllm.requests[-1]["temperature"] == 1.3
    assert again.prompt.pk == second.prompt.pk
    assert again.answer.parent_id == second.prompt.pk
    assert (await Message.objects.aget(pk=again.answer.pk)).content == "Two, again."
    # The old answer, and what followed it, are kept; the new answer is shown, and ends the branch.
    assert (await Message.objects.aget(pk=second.answer.pk)).content == "Two."
    assert await Message.objects.filter(pk=third.answer.pk, content="Three.").aexists()
    assert await shown(conversation) == ["First", "One.", "Second", "Two, again."]
    tree = await Tree.aof(conversation.pk)
    assert tree.versions_of(again.answer.pk) == Versions((second.answer.pk, again.answer.pk), again.answer.pk)
    assert tree.versions_of(again.answer.pk).position == 2


async def test_an_answer_that_follows_no_prompt_cannot_be_regenerated(conversation, fake_vllm):
    orphan = await Message.objects.acreate(conversation=conversation, role="assistant", content="Hi")
    with pytest.raises(turns.NoPrompt):
        await turns.regenerate(conversation, orphan)
    assert await Message.objects.filter(conversation=conversation).acount() == 1
    assert fake_vllm.requests == []


# --- Edit -------------------------------------------------------------------------------------------


async def test_an_edited_prompt_is_a_new_branch_and_the_earlier_one_is_kept(conversation, fake_vllm):
    first, second, _third = await three_turns(conversation, fake_vllm)

    edited = await answered(fake_vllm, turns.edit_prompt(conversation, second.prompt, "Second, better"), "Better.")

    assert sent_history(fake_vllm) == [
        ("system", "Be brief."),
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Second, better"),
    ]
    assert edited.prompt.parent_id == first.answer.pk
    assert await shown(conversation) == ["First", "One.", "Second, better", "Better."]
    tree = await Tree.aof(conversation.pk)
    assert tree.versions_of(edited.prompt.pk).ids == (second.prompt.pk, edited.prompt.pk)

    # The earlier branch, shown again, is whole; and a prompt sent there is answered with it.
    await branches.show(second.prompt)
    assert await shown(conversation) == ["First", "One.", "Second", "Two.", "Third", "Three."]
    await answered(fake_vllm, turns.start_turn(conversation, "Fourth"), "Four.")
    assert sent_history(fake_vllm)[1:] == [
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Second"),
        ("assistant", "Two."),
        ("user", "Third"),
        ("assistant", "Three."),
        ("user", "Fourth"),
    ]


async def test_editing_the_first_prompt_starts_the_conversation_again(conversation, fake_vllm):
    first, *_ = await three_turns(conversation, fake_vllm)

    edited = await answered(fake_vllm, turns.edit_prompt(conversation, first.prompt, "Hello"), "Hi.")

    assert sent_history(fake_vllm) == [("system", "Be brief."), ("user", "Hello")]
    assert edited.prompt.parent_id is None
    assert (await Tree.aof(conversation.pk)).versions_of(edited.prompt.pk).ids == (first.prompt.pk, edited.prompt.pk)
    assert await shown(conversation) == ["Hello", "Hi."]
    await conversation.arefresh_from_db()
    assert conversation.title == "First"  # named by the first prompt once, as before


async def test_a_prompt_follows_the_message_the_person_sees_even_if_another_tab_switched(conversation, fake_vllm):
    _first, second, _ = await three_turns(conversation, fake_vllm)
    edited = await answered(fake_vllm, turns.edit_prompt(conversation, second.prompt, "Other"), "Other answer.")
    # Another tab shows the first branch; this page still shows the edited one and sends after it.
    await branches.show(second.prompt)

    await answered(fake_vllm, turns.start_turn(conversation, "And then?", after=edited.answer), "Then.")

    assert sent_history(fake_vllm)[1:] == [
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Other"),
        ("assistant", "Other answer."),
        ("user", "And then?"),
    ]
    assert await shown(conversation) == ["First", "One.", "Other", "Other answer.", "And then?", "Then."]


async def test_only_the_branch_counts_against_the_context_window(conversation, fake_vllm, settings):
    settings.CHAT_CONTEXT_LENGTH = 400
    conversation.max_tokens = 150  # 250 tokens for the prompt and its history: one long answer, not two
    await conversation.asave()
    first = await answered(fake_vllm, turns.start_turn(conversation, "Talk"), *[" word"] * 150)
    again = await answered(fake_vllm, turns.regenerate(conversation, first.answer), *[" again"] * 150)
    await answered(fake_vllm, turns.start_turn(conversation, "More"), "Fine.")

    # Nothing was dropped to make room: the first answer, on another branch, was never counted.
    regenerated = (await Message.objects.aget(pk=again.answer.pk)).content
    assert regenerated == " again" * 150
    assert sent_history(fake_vllm)[1:] == [("user", "Talk"), ("assistant", regenerated), ("user", "More")]


# --- Versions -------------------------------------------------------------------------------------


def test_a_tree_finds_versions_and_the_newest_branch_below_a_message():
    # 1 → 2 → 3 → 4; 2 → 5 (regenerated answer) → 6 → 7; 6 → 8 (edited prompt), no answer yet.
    tree = Tree([(1, None), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 5)])
    assert tree.versions_of(5) == Versions((2, 5), 5)
    assert (tree.versions_of(5).previous, tree.versions_of(5).next) == (2, None)
    assert (tree.versions_of(2).previous, tree.versions_of(2).next) == (None, 5)
    assert tree.versions_of(1) == Versions((1,), 1) and tree.versions_of(1).count == 1
    assert tree.newest_tip_under(5) == 8
    assert tree.newest_tip_under(2) == 4
    assert tree.newest_tip_under(4) == 4
    assert tree.tip(None) == 8  # a conversation with no recorded tip shows its newest message's branch
    assert tree.tip(4) == 4
    assert Tree([]).tip(None) is None


async def test_showing_a_version_shows_the_newest_branch_below_it(conversation, fake_vllm):
    _first, second, _third = await three_turns(conversation, fake_vllm)
    edited = await answered(fake_vllm, turns.edit_prompt(conversation, second.prompt, "Other"), "Other answer.")

    await branches.show(second.answer)
    assert await shown(conversation) == ["First", "One.", "Second", "Two.", "Third", "Three."]
    await branches.show(edited.prompt)
    assert await shown(conversation) == ["First", "One.", "Other", "Other answer."]
    await conversation.arefresh_from_db()
    assert conversation.branch_tip_id == edited.answer.pk


# --- Writes and queries that do not grow with the conversation -------------------------------------


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """The SQL of every query, from every thread (the async ORM runs them off the event loop's)."""
    seen: list[str] = []
    original = CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]  # private: not in django-stubs

    def recording(self, sql, *args, **kwargs):
        seen.append(sql)
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", recording)
    return seen


def writes(sql: list[str]) -> list[str]:
    return [s.split()[0] for s in sql if s.split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]


async def test_regenerating_editing_and_switching_cost_the_same_in_a_long_conversation(
    alice, fake_vllm, statements, settings, monkeypatch
):
    # Every thread's statements are counted: the site's periodic work (a lease renewal, a checkpoint
    # of an answer slowed by a busy machine, the catalog's read of the admin's engines) must not fall
    # within one measured action and not the other.
    settings.CHAT_LEASE_SECONDS = 3600.0
    settings.CHAT_CHECKPOINT_SECONDS = 3600.0
    monkeypatch.setattr(catalog, "TTL", 3600.0)

    async def costs(turn_count: int) -> dict[str, tuple[list[str], int]]:
        conversation = await Conversation.objects.acreate(owner=alice)
        sent = [await answered(fake_vllm, turns.start_turn(conversation, f"Q{i}"), f"A{i}.") for i in range(turn_count)]
        # The model names the conversation after its first answer, in the background: its queries are
        # not the measured actions'.
        await titles.wait_for_name(conversation.pk)
        middle = sent[turn_count // 2]
        measured: dict[str, tuple[list[str], int]] = {}

        async def measure(name: str, action) -> None:
            before = len(statements)
            await action
            # A finished answer starts a look at whether the model should name the conversation (it
            # is not the first, so no): counted here, not in whichever action comes next.
            await titles.wait_for_name(conversation.pk)
            measured[name] = (writes(statements[before:]), len(statements) - before)

        async def regenerate() -> None:
            await ended((await turns.regenerate(conversation, middle.answer)).answer)

        async def edit() -> None:
            await ended((await turns.edit_prompt(conversation, middle.prompt, "Edited")).answer)

        async def send() -> None:
            await ended((await turns.start_turn(conversation, "Next")).answer)

        await measure("regenerate", regenerate())
        await measure("edit", edit())
        await measure("show", branches.show(middle.prompt))
        await measure("send", send())
        return measured

    short, long = await costs(2), await costs(12)

    assert short == long
    # The rows a switch writes: the conversation's tip. A regenerated answer: the answer, its final
    # state and the tip, and the conversation moved up the list.
    assert short["show"][0] == ["UPDATE"]
    assert len(short["regenerate"][0]) <= 4


# --- Stop, follow and recovery on any branch -------------------------------------------------------


async def test_a_regenerated_answer_streams_to_every_follower_and_stops_with_the_old_one_kept(conversation, fake_vllm):
    first = await answered(fake_vllm, turns.start_turn(conversation, "Count"), "one two three")
    fake_vllm.reply = ["uno", " dos", " tres"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 2
    again = await turns.regenerate(conversation, first.answer)

    async def text_of(answer: Message) -> str:
        text = ""
        async for event in turns.follow(answer):
            if isinstance(event, TextDelta):
                text += event.text
            else:
                return text
        raise AssertionError("no end")

    followers = [asyncio.ensure_future(text_of(again.answer)) for _ in range(2)]

    async def has_text() -> bool:
        return (await turns.current(again.answer)).content == "uno dos"

    await wait_for_async(has_text)
    stopped = await turns.stop_turn(again.answer)

    assert stopped.status == Message.Status.STOPPED and stopped.content == "uno dos"
    assert await asyncio.gather(*followers) == ["uno dos", "uno dos"]
    kept = await Message.objects.aget(pk=first.answer.pk)
    assert (kept.status, kept.content) == (Message.Status.COMPLETE, "one two three")
    assert await asyncio.to_thread(fake_vllm.wait_for_disconnect)


async def test_an_answer_left_streaming_on_a_branch_not_shown_is_recovered_as_interrupted(alice):
    conversation = await Conversation.objects.acreate(owner=alice)
    prompt = await Message.objects.acreate(conversation=conversation, role="user", content="Q")
    left = await Message.objects.acreate(
        conversation=conversation, parent=prompt, role="assistant", status=Message.Status.STREAMING, content="half"
    )
    shown_answer = await Message.objects.acreate(
        conversation=conversation, parent=prompt, role="assistant", content="A"
    )
    await Conversation.objects.filter(pk=conversation.pk).aupdate(branch_tip=shown_answer)

    assert await asyncio.to_thread(turns.recover_interrupted_turns) == 1

    await left.arefresh_from_db()
    assert (left.status, left.content) == (Message.Status.INTERRUPTED, "half")
    assert await shown(conversation) == ["Q", "A"]
