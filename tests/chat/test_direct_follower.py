"""An answer's one follower in the worker that generates it is written to by the turn's own task
(chat/direct_follower.py): the same events, ids and end, without a wake-up of its task per delta."""

import asyncio
import threading

import pytest

from chat import direct_follower, sse, turns
from chat.models import Conversation, Message
from tests.sse import sse_events_with_ids
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def conversation(alice):
    return await Conversation.objects.acreate(owner=alice, title="Direct")


class Client:
    """What an ASGI server's `send` would put on the wire, and which task sent each body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, str]] = []
        self.refuse = False

    async def send(self, message: dict) -> None:
        if self.refuse:
            raise OSError("the client has gone")
        task = asyncio.current_task()
        self.bodies.append((message["body"], task.get_name() if task else ""))

    def events(self) -> list[tuple[str, dict, str | None]]:
        lines = b"".join(body for body, _ in self.bodies).decode().splitlines()
        return list(sse_events_with_ids(lines))


async def follow(answer: Message, client: Client, since: int = 0) -> None:
    """What Django does with the response: each frame the follower yields, sent in its own task."""
    token = direct_follower._send.set(client.send)
    try:
        async for frame in sse.turn_events(answer, since):
            await client.send({"type": "http.response.body", "body": frame, "more_body": True})
    finally:
        direct_follower._send.reset(token)


async def test_the_turn_writes_each_delta_and_the_follower_only_the_end(conversation, fake_vllm):
    fake_vllm.reply = [f" t{i}" for i in range(20)]
    fake_vllm.token_delay = 0.01
    _, answer = await turns.start_turn(conversation, "Go")
    client = Client()
    following = asyncio.create_task(follow(answer, client), name="follower")

    await following

    events = client.events()
    text = "".join(data["text"] for name, data, _ in events if name == "delta")
    assert text == "".join(fake_vllm.reply)
    # Each delta's id is the answer's length once the client has it, in order, none twice.
    lengths = [int(event_id) for name, _, event_id in events if name == "delta" and event_id is not None]
    assert lengths == sorted(set(lengths)) and lengths[-1] == len(text)
    assert events[-1][0] == "done" and events[-1][1]["status"] == "complete"
    # The deltas after the text so far came from the turn's task; the follower's sent the end.
    senders = [sender for _, sender in client.bodies]
    assert senders[-1] == "follower"
    assert "follower" not in senders[1:-1]


async def test_a_follower_resuming_mid_answer_gets_the_rest_once_and_a_second_one_everything(conversation, fake_vllm):
    fake_vllm.reply = [f" w{i}" for i in range(30)]
    fake_vllm.token_delay = 0.05
    fake_vllm.delta_gate = gate = threading.Event()
    gate.set()
    _, answer = await turns.start_turn(conversation, "Go")
    running = turns._running[answer.pk]
    await wait_for_async(lambda: running.length > 20)
    gate.clear()  # the answer waits at its next delta
    so_far = running.text()
    resumed, other = Client(), Client()
    resuming = asyncio.create_task(follow(answer, resumed, since=10))
    await wait_for_async(lambda: running.direct is not None)
    watching = asyncio.create_task(follow(answer, other))  # a second tab: followed as before
    gate.set()
    await asyncio.gather(resuming, watching)

    whole = "".join(fake_vllm.reply)
    resumed_text = "".join(data["text"] for name, data, _ in resumed.events() if name == "delta")
    assert so_far[:10] + resumed_text == whole
    other_text = "".join(data["text"] for name, data, _ in other.events() if name == "delta")
    assert other_text == whole
    assert resumed.events()[-1][0] == other.events()[-1][0] == "done"


async def test_a_client_gone_mid_answer_leaves_the_turn_to_end_complete(conversation, fake_vllm):
    fake_vllm.reply = [f" g{i}" for i in range(20)]
    fake_vllm.delta_gate = gate = threading.Event()
    _, answer = await turns.start_turn(conversation, "Go")
    client = Client()
    following = asyncio.create_task(follow(answer, client))
    running = turns._running[answer.pk]
    await wait_for_async(lambda: running.direct is not None)
    client.refuse = True  # the server refuses the turn's next write
    gate.set()
    with pytest.raises(OSError):
        await following  # refused too when it sends the end, as a server may

    stored = await Message.objects.aget(pk=answer.pk)
    assert (stored.status, stored.content) == (Message.Status.COMPLETE, "".join(fake_vllm.reply))
    assert [sender for _, sender in client.bodies] == []  # nothing went out once it had gone
