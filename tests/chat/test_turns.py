"""The chat turn: what is saved, when, and how every answer ends, against the fake vLLM."""

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import DatabaseError, OperationalError, connection
from django.db.backends.utils import CursorWrapper
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from api import delivery
from chat import leases, running_turn, sse, titles, turn_storage, turns
from chat.models import Conversation, Message, MessageQuerySet
from chat.turns import TurnEnded
from engine import catalog, vllm_client
from engine.vllm_client import TextDelta
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def conversation(alice):
    return await Conversation.objects.acreate(owner=alice)


async def run_to_end(answer: Message) -> tuple[str, Message]:
    text = ""
    async for event in turns.follow(answer):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            return text, event.message
    raise AssertionError("the follower ended without TurnEnded")


async def first_delta(answer: Message) -> str:
    async for event in turns.follow(answer):
        assert isinstance(event, TextDelta), event
        return event.text
    raise AssertionError("no delta")


async def test_a_turn_streams_the_answer_and_saves_it_complete(conversation, fake_vllm):
    fake_vllm.reply = ["Local", " models", " keep", " data", " home."]
    prompt, answer = await turns.start_turn(conversation, "Why local models?")
    assert answer.status == Message.Status.STREAMING

    text, ended = await run_to_end(answer)

    assert text == "Local models keep data home."
    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.content == text
    assert stored.status == Message.Status.COMPLETE
    assert stored.finish_reason == "stop"
    assert stored.completion_tokens == 5
    assert stored.prompt_tokens and stored.prompt_tokens > 0
    assert stored.model_name == "qwen2-7b-instruct"
    assert stored.time_to_first_token is not None and stored.duration is not None
    assert stored.duration >= stored.time_to_first_token
    assert ended.status == Message.Status.COMPLETE
    assert (await Message.objects.aget(pk=prompt.pk)).content == "Why local models?"
    await conversation.arefresh_from_db()
    assert conversation.title == "Why local models?"


async def test_the_turn_sends_the_seeds_settings_and_the_history(conversation, fake_vllm):
    conversation.system_prompt = "Answer in French."
    conversation.temperature = 0.2
    await conversation.asave()
    fake_vllm.reply = ["Premier."]
    _, first = await turns.start_turn(conversation, "First question")
    await run_to_end(first)
    fake_vllm.reply = ["Second."]
    _, second = await turns.start_turn(conversation, "Second question")
    await run_to_end(second)

    request = fake_vllm.requests[-1]
    assert request["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "Premier."},
        {"role": "user", "content": "Second question"},
    ]
    assert request["temperature"] == 0.2
    assert request["max_tokens"] == 512
    assert request["top_p"] == 0.9
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


async def test_vllm_down_keeps_the_prompt_and_explains_the_error(conversation, fake_vllm):
    fake_vllm.fault = "refuse"
    prompt, answer = await turns.start_turn(conversation, "Anyone there?")
    _, ended = await run_to_end(answer)

    assert ended.status == Message.Status.ERROR
    assert "not reachable" in ended.error
    assert await Message.objects.filter(pk=prompt.pk, content="Anyone there?").aexists()
    assert (await Message.objects.aget(pk=answer.pk)).error == ended.error


async def test_a_failure_mid_stream_keeps_the_partial_text(conversation, fake_vllm):
    fake_vllm.reply = ["one", " two", " three", " four"]
    fake_vllm.fault = "error_frame"
    fake_vllm.fault_after = 2
    _, answer = await turns.start_turn(conversation, "Count")
    text, _ = await run_to_end(answer)

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.content == text == "one two"
    assert stored.status == Message.Status.ERROR
    assert "EngineCore" in stored.error


async def test_a_prompt_too_long_for_the_context_is_refused_before_calling_vllm(conversation, fake_vllm, settings):
    settings.CHAT_CONTEXT_LENGTH = 256
    conversation.max_tokens = 128
    await conversation.asave()
    prompt, answer = await turns.start_turn(conversation, "word " * 400)
    _, ended = await run_to_end(answer)

    assert ended.status == Message.Status.ERROR
    assert "256-token context" in ended.error
    assert fake_vllm.requests == []
    assert await Message.objects.filter(pk=prompt.pk).aexists()


async def test_stop_closes_the_upstream_request_and_keeps_the_partial_text(conversation, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(200)]
    fake_vllm.token_delay = 0.02
    _, answer = await turns.start_turn(conversation, "Talk a lot")
    await first_delta(answer)

    stopped = await turns.stop_turn(answer)

    assert stopped.status == Message.Status.STOPPED
    assert stopped.content.startswith(" w0")
    assert len(stopped.content) < len("".join(fake_vllm.reply))
    assert fake_vllm.wait_for_disconnect()
    # Stopping again changes nothing.
    assert (await turns.stop_turn(answer)).content == stopped.content


async def test_a_stop_during_a_checkpoint_closes_the_upstream_request_at_once(
    conversation, fake_vllm, settings, monkeypatch
):
    settings.CHAT_CHECKPOINT_SECONDS = 0
    fake_vllm.reply = [f" w{i}" for i in range(200)]
    fake_vllm.token_delay = 0.02
    in_checkpoint = asyncio.Event()
    checkpoint = turns.RunningTurn._checkpoint

    async def slow_checkpoint(self) -> None:
        in_checkpoint.set()
        await asyncio.sleep(0.5)
        await checkpoint(self)

    monkeypatch.setattr(turns.RunningTurn, "_checkpoint", slow_checkpoint)
    _, answer = await turns.start_turn(conversation, "Talk a lot")
    await in_checkpoint.wait()
    gc.disable()  # the connection must close because the stream is closed, not when it is collected
    try:
        stopped = await turns.stop_turn(answer)
        assert stopped.status == Message.Status.STOPPED
        assert await asyncio.to_thread(fake_vllm.wait_for_disconnect)
    finally:
        gc.enable()


async def test_a_stop_as_the_answer_ends_returns_it_as_it_ended(conversation, fake_vllm, monkeypatch):
    fake_vllm.reply = ["Done", "."]
    finishing = asyncio.Event()
    finish = turns.RunningTurn._finish

    async def slow_finish(self, outcome) -> None:
        finishing.set()
        await asyncio.sleep(0.3)
        await finish(self, outcome)

    monkeypatch.setattr(turns.RunningTurn, "_finish", slow_finish)
    _, answer = await turns.start_turn(conversation, "Short")
    await finishing.wait()

    stopped = await turns.stop_turn(answer)

    assert stopped.status == Message.Status.COMPLETE
    assert stopped.content == "Done."


async def test_a_follower_going_away_does_not_stop_the_answer(conversation, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(30)]
    fake_vllm.token_delay = 0.01
    _, answer = await turns.start_turn(conversation, "Keep going")
    follower = turns.follow(answer)
    await anext(follower)
    await follower.aclose()  # the browser tab closed

    text, ended = await run_to_end(answer)

    assert ended.status == Message.Status.COMPLETE
    assert text == "".join(fake_vllm.reply)
    assert fake_vllm.disconnects() == 0


async def test_a_late_follower_first_gets_the_whole_text_so_far(conversation, fake_vllm):
    fake_vllm.reply = ["alpha", " beta", " gamma", " delta"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 3
    _, answer = await turns.start_turn(conversation, "Greek")
    running = turns._running[answer.pk]
    await wait_for_async(lambda: len(running.parts) == 3)

    assert await first_delta(answer) == "alpha beta gamma"
    await turns.stop_turn(answer)


async def test_the_answer_is_checkpointed_while_it_streams(conversation, fake_vllm, settings):
    settings.CHAT_CHECKPOINT_SECONDS = 0.05
    fake_vllm.reply = ["slow", " and", " steady", " wins"]
    fake_vllm.token_delay = 0.1
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 3
    _, answer = await turns.start_turn(conversation, "Tortoise?")

    async def checkpointed() -> bool:
        stored = await Message.objects.aget(pk=answer.pk)
        return stored.status == Message.Status.STREAMING and stored.content.startswith("slow and")

    await wait_for_async(checkpointed)
    await turns.stop_turn(answer)


async def test_a_slow_first_token_is_not_checkpointed_alone(conversation, fake_vllm, settings, monkeypatch):
    # A busy vLLM (or site) answers late: the text is then new, and the checkpoints count its age
    # from when it came, not from the request.
    settings.CHAT_CHECKPOINT_SECONDS = 0.3
    # One delta, so that no later one comes a checkpoint's age after it on a busy machine.
    fake_vllm.reply = ["Late but quick"]
    checkpoints = []
    checkpoint = turns.RunningTurn._checkpoint

    async def counted(self) -> None:
        checkpoints.append(self.text())
        await checkpoint(self)

    monkeypatch.setattr(turns.RunningTurn, "_checkpoint", counted)
    real_stream = vllm_client.stream_chat

    async def late_first_token(*args, **kwargs):
        await asyncio.sleep(0.5)
        async for event in real_stream(*args, **kwargs):
            yield event

    monkeypatch.setattr(vllm_client, "stream_chat", late_first_token)
    _, answer = await turns.start_turn(conversation, "Busy?")
    text, ended = await run_to_end(answer)

    assert (text, ended.status) == ("Late but quick", Message.Status.COMPLETE)
    assert checkpoints == []


@pytest.fixture
def query_counter(monkeypatch):
    """Counts queries from every thread: the async ORM runs them off the event loop's thread."""
    counts = {"queries": 0}
    original = CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]  # private: not in django-stubs

    def counting(self, *args, **kwargs):
        counts["queries"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    return counts


async def test_a_turns_queries_do_not_grow_with_the_answers_length(
    conversation, fake_vllm, query_counter, monkeypatch, settings
):
    conversation.title = "Titled"  # the first turn of an untitled conversation also writes its title
    await conversation.asave()
    # The site's periodic work (the catalog's read of the admin's engines, a lease renewal, a
    # checkpoint of an answer a busy machine slowed past its period) runs whatever the turns: it
    # could fall within one measured turn and not the other.
    monkeypatch.setattr(catalog, "TTL", 3600.0)
    settings.CHAT_LEASE_SECONDS = 3600.0
    settings.CHAT_CHECKPOINT_SECONDS = 3600.0

    async def queries_for(deltas: int) -> int:
        fake_vllm.reply = [f" t{i}" for i in range(deltas)]
        before = query_counter["queries"]
        _, answer = await turns.start_turn(conversation, "Go")
        text, _ = await run_to_end(answer)
        await titles.wait_for_name(conversation.pk)  # its look at whether this is the first answer
        assert len(text) > deltas
        return query_counter["queries"] - before

    await queries_for(1)  # the first answer: the model names the conversation after it
    short, long = await queries_for(5), await queries_for(500)
    assert short == long


@pytest.fixture
def statements_of_a_turns_start(monkeypatch):
    """The SQL of each turn's start (its one transaction), as the thread that runs it sends them."""
    started: list[list[str]] = []
    for name in ("_save_prompt_and_answer", "_save_answer"):
        save = getattr(turns, name)

        def captured(*args, save=save, **kwargs):
            with CaptureQueriesContext(connection) as queries:
                try:
                    return save(*args, **kwargs)
                finally:
                    started.append([query["sql"] for query in queries.captured_queries])

        monkeypatch.setattr(turns, name, captured)
    return started


async def test_a_turns_start_takes_a_fixed_few_statements(
    conversation, fake_vllm, settings, statements_of_a_turns_start
):
    # The site's own limits, so that their check is counted.
    settings.CHAT_MAX_ANSWERS_AT_ONCE, settings.CHAT_MAX_ANSWERS_PER_MINUTE = 3, 20
    conversation.title = "Titled"  # an untitled conversation's first turn also writes its title
    await conversation.asave()
    fake_vllm.reply = ["ok"]
    prompt, answer = await turns.start_turn(conversation, "Go")
    await run_to_end(answer)
    await run_to_end((await turns.regenerate(conversation, answer)).answer)
    _, edited = await turns.edit_prompt(conversation, prompt, "Go on")
    await run_to_end(edited)

    sent, regenerated, edited_prompt = [[sql.split()[0] for sql in start] for start in statements_of_a_turns_start]
    # BEGIN; the owner's row with both limits' counts (SQLite: no row lock, the transaction holds the
    # database); the prompt, whose INSERT reads the branch shown; the answer; the conversation (its
    # place in the list, the settings changed, the new answer as the branch shown: one UPDATE); COMMIT.
    # Then, committed, the files of the prompts on its branch (a first prompt: no history to read).
    assert sent == ["BEGIN", "SELECT", "INSERT", "INSERT", "UPDATE", "COMMIT", "SELECT"]
    # The same without the prompt, and where it goes: a new answer to a prompt, an edited prompt
    # beside the one it edits.
    assert regenerated == ["BEGIN", "SELECT", "INSERT", "UPDATE", "COMMIT", "SELECT"]
    # An edited prompt also reads the files of the one it edits, to keep them (chat/attachments.py).
    assert edited_prompt == ["BEGIN", "SELECT", "INSERT", "SELECT", "INSERT", "UPDATE", "COMMIT", "SELECT"]
    stored = await Conversation.objects.aget(pk=conversation.pk)
    assert stored.branch_tip_id == edited.pk


@pytest.fixture
def statements_by_thread(monkeypatch):
    """Every statement Django's cursors send, with the thread that sends it, and every job handed to a
    thread pool (the turns' database work goes to threads: a hop each), from any thread."""
    seen: dict[str, list[str]] = {"statements": [], "hops": []}
    execute = CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]  # private: not in django-stubs
    submit = ThreadPoolExecutor.submit

    def noting(self, sql, *args, **kwargs):
        seen["statements"].append(f"{threading.current_thread().name} {sql.split()[0]}")
        return execute(self, sql, *args, **kwargs)

    def hopping(self, *args, **kwargs):
        seen["hops"].append(self._thread_name_prefix)
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", noting)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", hopping)
    return seen


async def test_a_prompt_in_a_conversation_starts_in_one_transaction_of_four_statements_on_one_thread_hop(
    conversation, fake_vllm, settings, monkeypatch, statements_by_thread
):
    if connection.vendor != "sqlite":
        # PostgreSQL reads the counts after the row lock, in a statement of their own (chat/limits.py).
        pytest.skip("the statements of SQLite's one thread")
    # The site's own limits, so that their counts are in it; nothing periodic within the measure.
    settings.CHAT_MAX_ANSWERS_AT_ONCE, settings.CHAT_MAX_ANSWERS_PER_MINUTE = 3, 20
    settings.CHAT_LEASE_SECONDS = settings.CHAT_CHECKPOINT_SECONDS = 3600.0
    monkeypatch.setattr(catalog, "TTL", 3600.0)
    conversation.title = "Titled"
    await conversation.asave()
    fake_vllm.reply = ["ok"]
    first = await turns.start_turn(conversation, "Hello")  # the conversation's first turn
    await run_to_end(first.answer)
    await titles.wait_for_name(conversation.pk)
    fake_vllm.delta_gate = threading.Event()  # the answer waits: what the start did is all there is
    statements_by_thread["statements"].clear()
    statements_by_thread["hops"].clear()

    prompt, answer = await turns.start_turn(conversation, "And then?")
    await wait_for_async(lambda: len(fake_vllm.requests) == 2)  # the turn has asked vLLM: its start is over
    fake_vllm.delta_gate.set()

    # With SQLite (the transaction locks the whole database: no row lock), the person's row with both
    # limits' counts; the prompt, whose INSERT reads the branch shown as its parent; the answer; the
    # conversation (its place in the list, the new answer as the branch shown). Then, committed, on
    # the same thread, the history the answer is asked with and the files of its branch's prompts
    # (issue 21): one hop from the event loop for it all.
    assert statements_by_thread["statements"] == [
        "sqlite_0 BEGIN",
        "sqlite_0 SELECT",
        "sqlite_0 INSERT",
        "sqlite_0 INSERT",
        "sqlite_0 UPDATE",
        "sqlite_0 SELECT",
        "sqlite_0 SELECT",
    ]
    assert statements_by_thread["hops"] == ["sqlite"]
    assert prompt.parent_id == first.answer.pk  # the branch shown, as the prompt's INSERT read it
    text, ended = await run_to_end(answer)
    assert (text, ended.status) == ("ok", Message.Status.COMPLETE)
    assert fake_vllm.requests[-1]["messages"][-3:] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "And then?"},
    ]


async def test_cancelling_without_a_stop_marks_the_answer_interrupted(conversation, fake_vllm):
    fake_vllm.reply = ["never", " ends"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 1
    _, answer = await turns.start_turn(conversation, "Shutdown test")
    await first_delta(answer)
    task = turns._running[answer.pk].task
    assert task is not None
    task.cancel()  # what a shutting-down event loop does
    await asyncio.wait({task})

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == Message.Status.INTERRUPTED
    assert stored.content == "never"
    assert stored.error == turns.INTERRUPTED_TEXT  # the same words as for a process that died


def test_answers_left_streaming_by_a_dead_process_become_interrupted(alice):
    conversation = Conversation.objects.create(owner=alice)
    left = Message.objects.create(
        conversation=conversation, role="assistant", status=Message.Status.STREAMING, content="half an ans"
    )
    done = Message.objects.create(conversation=conversation, role="assistant", content="whole")

    assert turns.recover_interrupted_turns() == 1

    left.refresh_from_db()
    assert left.status == Message.Status.INTERRUPTED
    assert left.content == "half an ans"
    assert left.error == turns.INTERRUPTED_TEXT == "The site stopped before this answer was finished."
    done.refresh_from_db()
    assert done.status == Message.Status.COMPLETE


async def test_following_an_ended_answer_replays_it_from_the_database(conversation, fake_vllm):
    fake_vllm.reply = ["stored", " text"]
    _, answer = await turns.start_turn(conversation, "Save me")
    await run_to_end(answer)

    text, ended = await run_to_end(answer)

    assert text == "stored text"
    assert isinstance(ended, Message) and ended.status == Message.Status.COMPLETE
    assert not isinstance(ended, TurnEnded)


# --- whatever fails inside a turn, the answer ends stored, with its text, and every follower is told ---


async def all_followers_to_end(answer: Message, followers: int = 2) -> list[tuple[str, Message]]:
    # A bounded wait: the defect this guards against is a follower that waits forever.
    return await asyncio.wait_for(asyncio.gather(*(run_to_end(answer) for _ in range(followers))), 10)


async def test_a_lone_surrogate_from_vllm_is_stored_as_the_replacement_character(conversation, fake_vllm):
    fake_vllm.reply = ["before ", "\ud800", " after"]
    _, answer = await turns.start_turn(conversation, "Say something odd")

    (text, ended), _ = await all_followers_to_end(answer)

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == ended.status == Message.Status.COMPLETE
    assert stored.content == text == "before \ufffd after"
    assert not turns.is_running(answer)
    assert (await turns.stop_turn(answer)).status == Message.Status.COMPLETE


async def test_a_checkpoint_that_fails_for_a_while_is_tried_again_and_the_answer_completes(
    conversation, fake_vllm, settings, monkeypatch, caplog
):
    # A checkpoint is only for durability: a database away for a moment (a long SQLite lock, a
    # PostgreSQL failover) must not end the answer.
    settings.CHAT_CHECKPOINT_SECONDS = 0
    fake_vllm.reply = [f" w{i}" for i in range(8)]
    fake_vllm.token_delay = 0.02
    save_checkpoint = turn_storage._save_checkpoint
    failed: list[str] = []

    async def failing_three_times(pk: int, text: str):
        if len(failed) < 3:
            failed.append(text)
            raise OperationalError("database is locked")
        return await save_checkpoint(pk, text)

    monkeypatch.setattr(running_turn, "_save_checkpoint", failing_three_times)
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    stored = await Message.objects.aget(pk=answer.pk)
    assert len(failed) == 3
    assert stored.status == ended.status == Message.Status.COMPLETE
    assert stored.content == text == "".join(fake_vllm.reply)
    assert len([r for r in caplog.records if "Could not checkpoint" in r.getMessage()]) == 1  # once, not per try


@pytest.mark.parametrize("failure", [RuntimeError("a bug")])
async def test_a_checkpoint_that_fails_ends_the_answer_in_error_with_its_text(
    conversation, fake_vllm, settings, monkeypatch, failure
):
    settings.CHAT_CHECKPOINT_SECONDS = 0
    fake_vllm.reply = ["kept", " lost", " lost"]
    fake_vllm.token_delay = 0.05

    async def failing_checkpoint(self) -> None:
        raise failure

    monkeypatch.setattr(turns.RunningTurn, "_checkpoint", failing_checkpoint)
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), (other_text, _) = await all_followers_to_end(answer)

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == ended.status == Message.Status.ERROR
    assert str(failure) in stored.error
    assert stored.content == text == other_text == "kept"
    assert not turns.is_running(answer)
    assert await asyncio.to_thread(fake_vllm.wait_for_disconnect)


@pytest.fixture
def failing_final_writes(monkeypatch):
    """Makes the end-of-turn writes (those that set a status) fail, the first `count` of them."""

    def fail(error: Exception, count: int) -> list[dict]:
        failed: list[dict] = []
        update = MessageQuerySet.update

        # The turn writes from threads of its own (sync ORM calls), hence `update`, not `aupdate`.
        def failing_update(self, **fields):
            if "status" in fields and len(failed) < count:
                failed.append(fields)
                raise error
            return update(self, **fields)

        monkeypatch.setattr(MessageQuerySet, "update", failing_update)
        return failed

    return fail


@pytest.mark.parametrize(
    "failure",
    [
        DatabaseError("value too long for type character varying(32)"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
)
async def test_a_final_write_that_fails_is_stored_as_an_error_with_the_text(
    conversation, fake_vllm, failing_final_writes, failure
):
    failed = failing_final_writes(failure, count=1)
    fake_vllm.reply = ["all", " of", " it"]
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    assert len(failed) == 1
    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == ended.status == Message.Status.ERROR
    assert "could not save" in stored.error
    assert stored.content == text == "all of it"
    assert not turns.is_running(answer)
    assert (await turns.stop_turn(answer)).status == Message.Status.ERROR


@pytest.mark.parametrize("failure", [DatabaseError("connection lost"), RuntimeError("a bug in a driver")])
async def test_a_database_that_refuses_every_final_write_still_ends_the_turn(
    conversation, fake_vllm, failing_final_writes, settings, monkeypatch, failure
):
    failed = failing_final_writes(failure, count=1000)
    fake_vllm.reply = ["unsaved", " answer"]
    stream = vllm_client.stream_chat

    async def once_both_follow(*args, **kwargs):
        # A follower that came after the end would read the database, which refuses every write here.
        await wait_for_async(lambda: any(turn.followers == 2 for turn in turns._running.values()))
        async for event in stream(*args, **kwargs):
            yield event

    monkeypatch.setattr(vllm_client, "stream_chat", once_both_follow)
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    assert failed and text == "unsaved answer"
    assert ended.status == Message.Status.ERROR
    assert not turns.is_running(answer)
    monkeypatch.undo()  # the database is back
    # Nothing runs the answer any more, so the next look at it settles what the database holds.
    stopped = await turns.stop_turn(answer)
    assert stopped.status == Message.Status.INTERRUPTED
    assert (await Message.objects.aget(pk=answer.pk)).status == Message.Status.INTERRUPTED


async def test_a_final_write_while_the_database_is_away_for_a_moment_is_tried_again(
    conversation, fake_vllm, failing_final_writes
):
    failed = failing_final_writes(OperationalError("server closed the connection unexpectedly"), count=3)
    fake_vllm.reply = ["all", " of", " it"]
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    assert len(failed) == 3
    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == ended.status == Message.Status.COMPLETE
    assert stored.content == text == "all of it"


async def test_a_final_write_that_cannot_be_made_says_where_the_text_is(
    conversation, fake_vllm, failing_final_writes, settings, caplog
):
    settings.CHAT_SAVE_RETRY_SECONDS = 0.6  # how long the final write is tried again
    failing_final_writes(OperationalError("could not connect to server"), count=1000)
    fake_vllm.reply = ["every", " word", " of", " it"]
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    assert text == "every word of it"
    assert ended.status == Message.Status.ERROR
    assert ended.error == turns.UNSAVED_TEXT and "in the site's log" in ended.error
    assert any("every word of it" in record.getMessage() for record in caplog.records)


async def test_an_exception_before_streaming_ends_the_answer_in_error(conversation, fake_vllm, monkeypatch):
    async def broken_fit_context(**kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(running_turn, "fit_with_files", broken_fit_context)
    _, answer = await turns.start_turn(conversation, "Go")

    (text, ended), _ = await all_followers_to_end(answer)

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == ended.status == Message.Status.ERROR
    assert "boom" in stored.error
    assert text == ""
    assert not turns.is_running(answer)


# --- defects found by reading the code (issue 9), each pinned down ---


async def test_a_follow_landing_between_the_commit_and_the_turns_start_follows_it(conversation, fake_vllm, monkeypatch):
    # The follower runs right after the answer is committed and before start_turn goes on: it must
    # see a live answer, not one that no turn runs (which it would mark interrupted).
    fake_vllm.reply = ["live", " answer"]
    save = turns._save_prompt_and_answer
    early: list[asyncio.Future] = []

    def save_then_follow(*args, **kwargs):
        # Runs on the thread that saves, right after the commit: the loop follows meanwhile.
        saved = save(*args, **kwargs)
        follower = asyncio.run_coroutine_threadsafe(follow_as_another_request(saved.answer), loop)
        early.append(asyncio.wrap_future(follower, loop=loop))
        with suppress(TimeoutError):
            follower.result(timeout=1)  # as long as it would take to settle the answer, if it did
        return saved

    async def follow_as_another_request(answer: Message) -> tuple[str, Message]:
        # Its own thread for the database, as Django gives each request: this test's thread is
        # the one still saving.
        async with ThreadSensitiveContext():
            return await run_to_end(answer)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(turns, "_save_prompt_and_answer", save_then_follow)
    _, answer = await turns.start_turn(conversation, "Now")

    text, ended = await asyncio.wait_for(early[0], 10)

    assert ended.status == Message.Status.COMPLETE
    assert text == "live answer"
    assert (await Message.objects.aget(pk=answer.pk)).status == Message.Status.COMPLETE


async def test_a_turn_saves_only_what_it_changes_on_the_conversation(conversation, fake_vllm):
    fake_vllm.reply = ["ok"]
    conversation.title = "Old title"
    await conversation.asave()
    seen_by_the_request = await Conversation.objects.aget(pk=conversation.pk)
    # Meanwhile, in another request: a rename and a new temperature.
    await Conversation.objects.filter(pk=conversation.pk).aupdate(title="Renamed", temperature=0.1)
    seen_by_the_request.change_settings(max_tokens=100)  # what the prompt form sent

    _, answer = await turns.start_turn(seen_by_the_request, "Go on")
    await run_to_end(answer)

    stored = await Conversation.objects.aget(pk=conversation.pk)
    assert stored.title == "Renamed"
    assert stored.temperature == 0.1
    assert stored.max_tokens == 100
    assert stored.updated_at > conversation.updated_at


async def test_an_untitled_conversations_first_turn_titles_it_unless_renamed_meanwhile(conversation, fake_vllm):
    fake_vllm.reply = ["ok"]
    renamed = await Conversation.objects.acreate(owner_id=conversation.owner_id)
    await Conversation.objects.filter(pk=renamed.pk).aupdate(title="Chosen")

    _, first = await turns.start_turn(conversation, "Title me")
    _, second = await turns.start_turn(renamed, "Not me")
    await run_to_end(first)
    await run_to_end(second)

    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Title me"
    assert (await Conversation.objects.aget(pk=renamed.pk)).title == "Chosen"


async def test_a_turn_in_a_conversation_deleted_meanwhile_is_not_found_and_saves_nothing(conversation, fake_vllm):
    seen_by_the_request = await Conversation.objects.aget(pk=conversation.pk)
    await Conversation.objects.filter(pk=conversation.pk).adelete()

    with pytest.raises(Http404):
        await turns.start_turn(seen_by_the_request, "Anyone?")

    assert not await Conversation.objects.filter(pk=conversation.pk).aexists()  # not brought back
    assert not await Message.objects.filter(conversation_id=conversation.pk).aexists()
    assert fake_vllm.requests == []


async def test_deleting_a_conversation_anywhere_stops_its_turn(conversation, fake_vllm):
    # As the admin and a shell delete: a queryset delete, not the page's stop-then-delete.
    fake_vllm.reply = [f" w{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    _, answer = await turns.start_turn(conversation, "Talk a lot")
    await first_delta(answer)

    await sync_to_async(Conversation.objects.filter(pk=conversation.pk).delete)()

    assert await asyncio.to_thread(fake_vllm.wait_for_disconnect)
    await wait_for_async(lambda: not turns.is_running(answer), what="the turn to end")
    assert not await Message.objects.filter(pk=answer.pk).aexists()


async def test_a_turn_whose_rows_are_gone_stops_at_its_next_checkpoint(conversation, fake_vllm, settings):
    # Rows deleted without Django's signals (raw SQL, another program): the turn finds out itself.
    settings.CHAT_CHECKPOINT_SECONDS = 0.05
    fake_vllm.reply = [f" w{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02
    _, answer = await turns.start_turn(conversation, "Talk a lot")
    await first_delta(answer)

    # The conversation points at its answer (the branch shown): let go of it first.
    await Conversation.objects.filter(pk=conversation.pk).aupdate(branch_tip=None)
    await sync_to_async(Message.objects.filter(conversation=conversation)._raw_delete)("default")

    assert await asyncio.to_thread(fake_vllm.wait_for_disconnect)
    await wait_for_async(lambda: not turns.is_running(answer), what="the turn to end")


async def test_a_slow_follower_gets_what_came_meanwhile_as_one_delta(conversation, fake_vllm):
    fake_vllm.reply = ["first", *[f" w{i}" for i in range(300)]]
    fake_vllm.token_delay = 0.005
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 301
    _, answer = await turns.start_turn(conversation, "Many deltas")
    follower = turns.follow(answer)
    # What came before the follower's first read (on a busy machine, more than the first delta).
    first = await anext(follower)
    assert isinstance(first, TextDelta) and first.text.startswith("first")
    running = turns._running[answer.pk]
    await wait_for_async(lambda: len(running.parts) == 301, what="every delta to arrive")

    # The follower read nothing while the other deltas came: it holds no backlog, and gets them at once.
    caught_up = await anext(follower)

    assert isinstance(caught_up, turns.TurnDelta) and caught_up.offset == len(first.text)
    assert first.text + caught_up.text == "".join(fake_vllm.reply)
    await follower.aclose()
    await turns.stop_turn(answer)


async def test_a_stream_that_is_closed_or_done_stops_following_at_once(conversation, fake_vllm):
    fake_vllm.reply = ["one", " two"]
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 1
    _, answer = await turns.start_turn(conversation, "Go")
    running = turns._running[answer.pk]
    gc.disable()  # each follower must end when its stream does, not when it is collected
    try:
        stream = sse.turn_events(answer)
        await anext(stream)
        assert running.followers == 1
        await stream.aclose()  # the browser went away
        assert running.followers == 0

        ended = asyncio.create_task(delivery.ended(answer))
        await wait_for_async(lambda: running.followers == 1)
        await turns.stop_turn(answer)
        assert (await ended).status == Message.Status.STOPPED
        assert running.followers == 0
    finally:
        gc.enable()


async def test_turns_read_and_write_the_database_side_by_side_not_one_at_a_time(alice, fake_vllm, monkeypatch):
    # Each turn's database calls run on threads of their own (as Channels' database_sync_to_async),
    # not queued on asgiref's one shared thread: two turns can be inside one at the same time.
    # So on PostgreSQL; SQLite lets one writer in at a time (the next test).
    monkeypatch.setattr(leases, "one_at_a_time", lambda: False)
    fake_vllm.reply = ["fine"]
    both_reading = threading.Barrier(2, timeout=5)
    usable_as_context = MessageQuerySet.usable_as_context

    def read_together(self):
        both_reading.wait()  # broken, and the turn fails, unless the other turn reads meanwhile
        return usable_as_context(self)

    monkeypatch.setattr(MessageQuerySet, "usable_as_context", read_together)
    first = await Conversation.objects.acreate(owner=alice, title="One")
    second = await Conversation.objects.acreate(owner=alice, title="Two")
    answers = [(await turns.start_turn(conversation, "Hi")).answer for conversation in (first, second)]

    ended = await asyncio.gather(*(run_to_end(answer) for answer in answers))

    assert [message.status for _, message in ended] == [Message.Status.COMPLETE] * 2


async def test_with_sqlite_the_turns_database_work_goes_one_call_at_a_time_on_one_thread(alice, fake_vllm, monkeypatch):
    # Calls from many threads would each wait for SQLite's write lock in its busy handler, asleep
    # for up to 100 ms at a time while the lock was free: under a burst, most of a turn's start.
    fake_vllm.reply = ["fine"]
    threads: list[str] = []
    usable_as_context = MessageQuerySet.usable_as_context

    def noted(self):
        threads.append(threading.current_thread().name)
        return usable_as_context(self)

    monkeypatch.setattr(MessageQuerySet, "usable_as_context", noted)
    conversations = [await Conversation.objects.acreate(owner=alice, title=str(n)) for n in range(3)]
    for conversation in conversations:  # earlier turns to read (a first prompt has none)
        await Message.objects.acreate(conversation=conversation, role=Message.Role.USER, content="Earlier")
    answers = [(await turns.start_turn(conversation, "Hi")).answer for conversation in conversations]

    ended = await asyncio.gather(*(run_to_end(answer) for answer in answers))

    assert [message.status for _, message in ended] == [Message.Status.COMPLETE] * 3
    assert len(threads) == 3 and len(set(threads)) == 1 and threads[0].startswith("sqlite")


async def test_a_start_cancelled_while_its_rows_are_saved_still_runs_its_answer_to_the_end(
    conversation, fake_vllm, monkeypatch
):
    # A client that goes away while its prompt is being saved (a page left, an API client's
    # timeout) cancels the request; the rows are saved all the same, and their answer must not be
    # left "streaming" with nothing to end it (no stop, delete or follower could then settle it).
    fake_vllm.reply = ["still", " answered"]
    await leave_while_saving(conversation, monkeypatch, turns._save_prompt_and_answer)

    answers = Message.objects.filter(role=Message.Role.ASSISTANT)
    await wait_for_async(lambda: answers.exclude(status=Message.Status.STREAMING).aexists(), what="the answer to end")
    answer = await answers.aget()
    assert (answer.status, answer.content) == (Message.Status.COMPLETE, "still answered")
    await wait_for_async(lambda: not turns.is_running(answer), what="the turn to be let go")


async def leave_while_saving(conversation, monkeypatch, save) -> None:
    """Start a turn whose rows take a while to save (`save` saves them), and cancel its start
    meanwhile, as a client that goes away does."""
    saving = threading.Event()

    def slow_save(*args, **kwargs):
        saving.set()
        threading.Event().wait(0.5)  # the client leaves meanwhile
        return save(*args, **kwargs)

    monkeypatch.setattr(turns, "_save_prompt_and_answer", slow_save)
    start = asyncio.ensure_future(turns.start_turn(conversation, "Then I left"))
    assert await asyncio.to_thread(saving.wait, 10)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start


async def test_a_start_that_fails_after_its_request_has_gone_is_logged(conversation, fake_vllm, monkeypatch, caplog):
    def failing_save(*args, **kwargs):
        raise DatabaseError("disk I/O error")

    await leave_while_saving(conversation, monkeypatch, failing_save)

    await wait_for_async(lambda: "after its request had gone" in caplog.text, what="the failure to be logged")
    assert "disk I/O error" in caplog.text


def test_a_start_that_fails_takes_back_only_its_own_answer(conversation):
    # Two starts of one person's at once: the one refused (or finding its conversation deleted)
    # after the other registered its answer must not take that one's registration with it.
    others = turns.RunningTurn(Message(pk=987_654, role=Message.Role.ASSISTANT), asyncio.new_event_loop())

    @turns._in_one_transaction
    def refused_while_another_registers() -> turns.RunningTurn:
        turns._running[987_654] = others  # the other request's turn, registered meanwhile
        raise Http404("This conversation has been deleted.")

    try:
        with pytest.raises(Http404):
            refused_while_another_registers()
        assert turns._running.get(987_654) is others
    finally:
        turns._running.pop(987_654, None)
        others.loop.close()
