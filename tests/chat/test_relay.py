"""Following and stopping an answer across workers, through the Channels layer (in memory here; the
real thing, with Redis and three daphne processes, is tests/test_workers.py).

"Another worker" is played by the test on the layer, so that it can lose, repeat and reorder
messages as channels-redis may."""

import asyncio
from contextlib import suppress
from datetime import timedelta

import pytest
from django.utils import timezone

from chat import leases, relay, turns
from chat.models import Conversation, Message
from chat.turns import TurnDelta, TurnEnded
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = "worker.owner.2.beef"


@pytest.fixture(autouse=True)
async def empty_layer():
    # The in-memory layer is the process's: nothing left over from another test.
    await relay.layer().flush()
    relay._Outage.failing = False


@pytest.fixture
async def answer(alice) -> Message:
    conversation = await Conversation.objects.acreate(owner=alice, title="Relay")
    return await Message.objects.acreate(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        content="Hello",  # the last checkpoint
        worker=OWNER,
        lease_until=timezone.now() + timedelta(seconds=60),
    )


async def owner_request() -> dict:
    return await asyncio.wait_for(relay.layer().receive(OWNER), 5)


async def follow_all(answer: Message, since: int = 0) -> tuple[str, list[int], Message]:
    text, offsets = "", []
    async for event in turns.follow(answer, since):
        if isinstance(event, TurnDelta):
            assert event.offset == since + len(text), "a gap or a duplicate"
            text += event.text
            offsets.append(event.offset)
        elif isinstance(event, TurnEnded):
            return text, offsets, event.message
    raise AssertionError("no TurnEnded")


async def test_a_follower_elsewhere_gets_every_character_once_whatever_the_layer_does(answer):
    following = asyncio.create_task(follow_all(answer))
    request = await owner_request()
    assert request["type"] == "turn.follow" and request["since"] == 0
    group = relay.group_for(answer.pk)
    send = relay.layer().send
    await send(request["reply_to"], {"type": "turn.text", "offset": 0, "text": "Hello, wor", "running": True})
    await relay.publish(answer.pk, 7, "world")  # overlaps what the reply had: only "ld" is new
    await relay.publish(answer.pk, 7, "world")  # a duplicate
    await relay.publish(answer.pk, 20, "lost?")  # a gap: ", how are you " never arrived
    again = await owner_request()
    assert again["type"] == "turn.follow" and again["since"] == len("Hello, world")
    await send(again["reply_to"], {"type": "turn.text", "offset": 12, "text": ", how are you?", "running": True})
    await Message.objects.filter(pk=answer.pk).aupdate(
        content="Hello, world, how are you?", status=Message.Status.COMPLETE
    )
    await relay.layer().group_send(group, {"type": "turn.ended", "offset": 26})

    text, offsets, ended = await asyncio.wait_for(following, 5)

    assert text == "Hello, world, how are you?"
    assert offsets == [0, 10, 12]
    assert ended.status == Message.Status.COMPLETE


async def test_a_follower_elsewhere_that_hears_nothing_reads_the_database(answer, settings):
    settings.CHAT_LEASE_SECONDS = 0.6  # a quiet period of 0.2 s
    following = asyncio.create_task(follow_all(answer, since=2))
    await owner_request()  # and never answered: the owner's mailbox is lost, say
    await asyncio.sleep(0.5)
    await Message.objects.filter(pk=answer.pk).aupdate(content="Hello there", status=Message.Status.STOPPED)

    text, _, ended = await asyncio.wait_for(following, 5)

    assert text == "llo there"  # from character 2, as asked (Last-Event-ID)
    assert ended.status == Message.Status.STOPPED


async def test_a_follower_elsewhere_sees_its_owner_die(answer, settings):
    settings.CHAT_LEASE_SECONDS = 0.6
    following = asyncio.create_task(follow_all(answer))
    await owner_request()
    await Message.objects.filter(pk=answer.pk).aupdate(lease_until=timezone.now() - timedelta(seconds=1))

    text, _, ended = await asyncio.wait_for(following, 5)

    assert text == "Hello"
    assert ended.status == Message.Status.INTERRUPTED


async def test_a_stop_elsewhere_asks_the_owner_and_returns_the_answer_it_stored(answer):
    stopping = asyncio.create_task(turns.stop_turn(answer))
    request = await owner_request()
    assert request == {"type": "turn.stop", "answer": answer.pk, "reply_to": request["reply_to"]}
    await Message.objects.filter(pk=answer.pk).aupdate(status=Message.Status.STOPPED, content="Hello wo")
    await relay.layer().send(request["reply_to"], {"type": "turn.stopped"})

    stopped = await asyncio.wait_for(stopping, 5)

    assert stopped.status == Message.Status.STOPPED and stopped.content == "Hello wo"


async def test_the_owner_answers_a_follow_and_then_sends_each_delta_with_its_offset(alice, fake_vllm):
    fake_vllm.reply = ["one", " two", " three", " four"]
    fake_vllm.token_delay = 0.05
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 2
    conversation = await Conversation.objects.acreate(owner=alice, title="Owner")
    _, answer = await turns.start_turn(conversation, "Count")
    await wait_for_async(lambda: turns._running[answer.pk].length == len("one two"))
    follower = await relay.layer().new_channel()
    await relay.layer().group_add(relay.group_for(answer.pk), follower)

    await relay.send(leases.WORKER, {"type": "turn.follow", "answer": answer.pk, "since": 3, "reply_to": follower})
    reply = await asyncio.wait_for(relay.layer().receive(follower), 5)
    assert reply == {"type": "turn.text", "offset": 3, "text": " two", "running": True}

    await relay.send(leases.WORKER, {"type": "turn.stop", "answer": answer.pk, "reply_to": follower})
    received = [await asyncio.wait_for(relay.layer().receive(follower), 5) for _ in range(2)]
    assert {"type": "turn.ended", "offset": 7} in received
    assert {"type": "turn.stopped"} in received
    assert (await Message.objects.aget(pk=answer.pk)).status == Message.Status.STOPPED


# --- while the layer fails (Redis away): issue 20 ---------------------------------------------


@pytest.fixture
def layer_down(monkeypatch):
    """The layer refuses every call, as channels-redis does while Redis is down; counts the calls."""
    calls: list[str] = []

    def refuse(name: str):
        async def refused(*args, **kwargs):
            calls.append(name)
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return refused

    for name in ("send", "receive", "group_add", "group_discard", "group_send"):
        monkeypatch.setattr(relay.layer(), name, refuse(name))
    return calls


async def test_a_follower_elsewhere_waits_out_a_failing_layer_like_a_quiet_period_and_says_so_once(
    answer, settings, layer_down, caplog, monkeypatch
):
    settings.CHAT_LEASE_SECONDS = 0.6  # a quiet period of 0.2 s
    looks: list[float] = []
    look = turns._look

    async def counted_look(pk: int):
        looks.append(asyncio.get_running_loop().time())
        return await look(pk)

    monkeypatch.setattr(turns, "_look", counted_look)
    follower = turns.follow(answer)
    first = await asyncio.wait_for(anext(follower), 5)  # the checkpointed text, from the database
    assert isinstance(first, TurnDelta) and first.text == "Hello"
    following = asyncio.create_task(anext(follower))
    await wait_for_async(lambda: len(looks) >= 5, what="the follower to read the database again")
    following.cancel()
    with suppress(asyncio.CancelledError):
        await following
    await follower.aclose()

    # A quiet period between reads of the database, not a spin: ~900 reads in 2 s before.
    assert looks[-1] - looks[1] >= 3 * relay.quiet_period() * 0.9
    failures = [r for r in caplog.records if r.name == "chat.relay" and r.levelname == "ERROR"]
    assert len(failures) == 1, [r.getMessage() for r in failures]


async def test_the_mailbox_waits_out_a_failing_layer_and_says_so_once(settings, layer_down, caplog):
    settings.CHAT_LEASE_SECONDS = 0.6

    async def handle(message: dict) -> None:
        raise AssertionError("no message while the layer is down")

    started = asyncio.get_running_loop().time()
    listening = asyncio.create_task(relay.listen(handle))
    await wait_for_async(lambda: layer_down.count("receive") >= 3, what="the mailbox to try again")
    listening.cancel()

    assert asyncio.get_running_loop().time() - started >= 2 * relay.quiet_period() * 0.9
    assert len([r for r in caplog.records if r.name == "chat.relay" and r.levelname == "ERROR"]) == 1


async def test_a_stop_elsewhere_while_the_layer_fails_is_recorded_in_the_database_and_returns(
    answer, settings, layer_down
):
    settings.CHAT_LEASE_SECONDS = 0.6

    pending = await asyncio.wait_for(turns.stop_turn(answer), 5)

    # The owner could not be told: it is alive, so the answer goes on until it reads the stop.
    assert pending.status == Message.Status.STREAMING
    assert (await Message.objects.aget(pk=answer.pk)).stop_requested_at is not None


async def test_a_stop_elsewhere_returns_once_the_owner_has_stopped_on_reading_the_database(
    answer, settings, layer_down
):
    settings.CHAT_LEASE_SECONDS = 3  # a quiet period of 1 s, and a stop that waits up to 4 s

    async def owner_stops_when_asked_through_the_database() -> None:
        await wait_for_async(
            lambda: Message.objects.filter(pk=answer.pk).exclude(stop_requested_at=None).aexists(),
            what="the stop to be recorded",
        )
        await Message.objects.filter(pk=answer.pk).aupdate(status=Message.Status.STOPPED, content="Hello wo")

    owner = asyncio.create_task(owner_stops_when_asked_through_the_database())
    stopped = await asyncio.wait_for(turns.stop_turn(answer), 10)
    await owner

    assert stopped.status == Message.Status.STOPPED and stopped.content == "Hello wo"


@pytest.mark.parametrize("when", ["checkpoint", "lease renewal"])
async def test_an_owner_asked_to_stop_through_the_database_stops_and_keeps_its_text(alice, fake_vllm, settings, when):
    settings.CHAT_LEASE_SECONDS = 0.6
    fake_vllm.reply = [f" w{i}" for i in range(200)]
    if when == "checkpoint":
        settings.CHAT_CHECKPOINT_SECONDS = 0.05
        fake_vllm.token_delay = 0.02
    else:  # nothing comes from vLLM for a while, so no checkpoint: only the lease's timer reads it
        settings.CHAT_CHECKPOINT_SECONDS = 60
        fake_vllm.fault = "stall"
        fake_vllm.fault_after = 3
    conversation = await Conversation.objects.acreate(owner=alice, title="Owner")
    _, answer = await turns.start_turn(conversation, "Count")
    running = turns._running[answer.pk]
    await wait_for_async(lambda: running.length >= len(" w0 w1 w2"))

    await Message.objects.filter(pk=answer.pk).aupdate(stop_requested_at=timezone.now())
    await wait_for_async(lambda: running.ended is not None, what="the owner to stop")

    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.status == Message.Status.STOPPED
    assert stored.content == running.text() and stored.content.startswith(" w0 w1 w2")
    assert await asyncio.to_thread(fake_vllm.wait_for_disconnect, timeout=5)


async def test_a_failed_publish_does_not_silence_the_answer_for_other_workers(alice, fake_vllm, monkeypatch):
    fake_vllm.reply = [f" w{i}" for i in range(60)]
    fake_vllm.token_delay = 0.03
    group_send = relay.layer().group_send
    failed: list[dict] = []

    async def failing_once(group: str, message: dict) -> None:
        if not failed:
            failed.append(message)
            raise ConnectionError("Redis restarting")
        await group_send(group, message)

    monkeypatch.setattr(relay.layer(), "group_send", failing_once)
    conversation = await Conversation.objects.acreate(owner=alice, title="Publish")
    _, answer = await turns.start_turn(conversation, "Count")
    follower = await relay.layer().new_channel()
    await relay.layer().group_add(relay.group_for(answer.pk), follower)
    await relay.send(leases.WORKER, {"type": "turn.follow", "answer": answer.pk, "since": 0, "reply_to": follower})

    received = [await asyncio.wait_for(relay.layer().receive(follower), 5) for _ in range(4)]

    assert failed
    deltas = [m for m in received if m["type"] == "turn.delta"]
    assert len(deltas) >= 2  # every delta after the failed one still goes out
    await turns.stop_turn(answer)
