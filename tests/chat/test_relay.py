"""Following and stopping an answer across workers, through the Channels layer (in memory here; the
real thing, with Redis and three daphne processes, is tests/test_workers.py).

"Another worker" is played by the test on the layer, so that it can lose, repeat and reorder
messages as channels-redis may."""

import asyncio
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
