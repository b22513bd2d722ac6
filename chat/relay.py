"""An answer's text and stop requests between the site's worker processes, through the Channels layer.

Only the worker generating an answer (its owner: chat/leases.py) holds its whole text as it
grows. The layer carries it to the others:
- Each worker listens on a channel named after it (`leases.WORKER`). Another worker asks it there
  to stop an answer, or to send an answer's text from a given character on.
- An answer has a group, `answer.<pk>`. A worker following an answer it does not own joins the
  group on a channel of its own, then asks the owner. The owner replies with the text from the
  follower's offset, and from then on sends each delta to the group, batched (one message carries
  everything since the last one it sent) and marked with the character offset where it starts.

The layer may lose messages: channels-redis drops a group message silently for a member whose
channel is full (100 messages by default), expires any message after 60 s, and a worker may die
with messages for it unread. So the layer is never the truth, only a quick way to it. The owner
writes the text to the database; a follower skips what it has already had (by offset), asks the
owner again on a gap, and whenever it hears nothing for a while reads the database: the
checkpointed text (a prefix of the owner's text: an answer's text only grows) and whether the
answer has ended, or its owner died.

The layer may also be away (Redis restarting): then each wait on it that fails counts as a quiet
period, waited out as one (not retried at once: a follower would spin, reading the database in a
tight loop), and the failure is logged once, when it starts, and its end once.
"""

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from chat.leases import WORKER
from chat.models import Message

log = logging.getLogger(__name__)

# The answer as the database has it now, with a dead owner's answer marked interrupted; None once
# it has been deleted.
type Look = Callable[[], Awaitable[Message | None]]


def layer() -> BaseChannelLayer:
    found = get_channel_layer()
    assert found is not None, "settings.CHANNEL_LAYERS has a default layer"
    return found


def group_for(pk: int) -> str:
    return f"answer.{pk}"


def quiet_period() -> float:
    """How long a follower or a stop waits on the layer before it reads the database instead."""
    return max(settings.CHAT_LEASE_SECONDS / 3, 0.2)


class _Outage:
    """Whether the layer is failing for this process now: its failures are logged once per
    outage, with the first one's traceback, and the layer's return once."""

    failing = False

    @classmethod
    def failed(cls, what: str) -> None:
        if not cls.failing:
            cls.failing = True
            log.exception("The Channels layer failed (%s); reading the database until it is back", what)

    @classmethod
    def worked(cls) -> None:
        if cls.failing:
            cls.failing = False
            log.warning("The Channels layer works again")


async def send(channel: str, message: dict[str, Any]) -> bool:
    """Send, or give up on a full channel (its reader is gone or far behind): the database still
    tells whoever waits for this what they need."""
    try:
        await layer().send(channel, message)
    except ChannelFull:
        log.warning("Channel %s is full: dropped a %s", channel, message["type"])
        return False
    except Exception:
        _Outage.failed(f"sending a {message['type']}")  # Redis away for now
        return False
    _Outage.worked()
    return True


# --- The owner's side ---------------------------------------------------------------------------


async def publish(pk: int, offset: int, text: str) -> None:
    """Send a delta to the answer's followers elsewhere, or drop it if the layer fails: they find
    the gap by its offset and ask for it again, or read the database."""
    await _group_send(pk, {"type": "turn.delta", "offset": offset, "text": text})


async def publish_end(pk: int, offset: int) -> None:
    await _group_send(pk, {"type": "turn.ended", "offset": offset})


async def _group_send(pk: int, message: dict[str, Any]) -> None:
    try:
        await layer().group_send(group_for(pk), message)
    except Exception:
        _Outage.failed(f"publishing answer {pk}")
    else:
        _Outage.worked()


async def listen(handle: Callable[[dict[str, Any]], Coroutine[Any, Any, None]]) -> None:
    """This worker's mailbox: each request from another worker, handled in a task of its own so
    that a slow stop does not hold up the next request."""
    handling: set[asyncio.Task[None]] = set()
    while True:
        try:
            message = await layer().receive(WORKER)
        except Exception:
            # Redis away for a moment: this worker's answers are still stored, and the others
            # fall back on the database meanwhile.
            _Outage.failed("this worker's mailbox")
            await asyncio.sleep(quiet_period())
            continue
        _Outage.worked()
        task = asyncio.create_task(handle(message))
        handling.add(task)
        task.add_done_callback(handling.discard)


# --- Another worker's side ----------------------------------------------------------------------


async def follow(answer: Message, since: int, look: Look) -> AsyncGenerator[tuple[int, str]]:
    """(offset, text) pieces of the answer's text from character `since` on, each starting where
    the last one ended, until the answer has ended; then the caller reads it from the database.

    For an answer generated by another worker (`answer.worker`).
    """
    channel = await layer().new_channel()
    offset = since
    waiting_for_reply = False
    asked = 0.0
    joined = False

    async def ask() -> None:
        nonlocal waiting_for_reply, asked, joined
        if not joined:
            # (Again after an outage: a Redis that restarted has forgotten its groups.)
            try:
                await layer().group_add(group_for(answer.pk), channel)
                joined = True
            except Exception:
                _Outage.failed(f"joining answer {answer.pk}'s group")
        waiting_for_reply, asked = True, time.monotonic()
        request = {"type": "turn.follow", "answer": answer.pk, "since": offset, "reply_to": channel}
        await send(answer.worker, request)

    try:
        await ask()
        while True:
            try:
                async with asyncio.timeout(quiet_period()):
                    message = await layer().receive(channel)
                _Outage.worked()
            except TimeoutError:
                message = {"type": "quiet"}
            except Exception:
                _Outage.failed(f"following answer {answer.pk}")
                joined = False
                await asyncio.sleep(quiet_period())  # as long as a quiet period, not a spin
                message = {"type": "quiet"}
            match message:
                case {"type": "turn.delta" | "turn.text", "offset": int(start), "text": str(text)}:
                    if message["type"] == "turn.text":
                        waiting_for_reply = False
                    if start > offset:
                        # A gap: messages were dropped. Ask again, unless the reply to the last ask
                        # (which covers the gap) may still be on its way.
                        if not waiting_for_reply or time.monotonic() - asked > quiet_period():
                            await ask()
                        continue
                    if new := text[offset - start :]:
                        yield offset, new
                        offset += len(new)
                    if message.get("running") is not False:
                        continue
                case {"type": "turn.ended"}:
                    return
            # Heard nothing for a while, or the owner no longer runs it: the database says whether
            # it has ended (or its owner died), and has its text as of the last checkpoint.
            stored = await look()
            if stored is None:
                return
            if len(stored.content) > offset:
                yield offset, stored.content[offset:]
                offset = len(stored.content)
            if not stored.is_streaming:
                return
            await ask()
    finally:
        with suppress(Exception):  # the group forgets members after a day anyway
            await layer().group_discard(group_for(answer.pk), channel)


async def stop(answer: Message, look: Look) -> None:
    """Ask the answer's owner to stop it, and return once it has (or has ended anyway, or died).

    Asks again each quiet period, in case the layer lost the request; gives up after a lease's
    time, by which an owner that is alive has stopped it and one that is dead has lost it.
    The stop is also recorded in the database (chat/turns.py `stop_turn`): while the layer fails,
    this only waits, a quiet period at a time, for the database to say the answer has ended.
    """
    deadline = time.monotonic() + settings.CHAT_LEASE_SECONDS + quiet_period()
    channel: str | None = None
    while time.monotonic() < deadline:
        try:
            channel = channel or await layer().new_channel()
            if await send(answer.worker, {"type": "turn.stop", "answer": answer.pk, "reply_to": channel}):
                async with asyncio.timeout(quiet_period()):
                    while (await layer().receive(channel))["type"] != "turn.stopped":
                        pass
                return
            await asyncio.sleep(quiet_period())  # not sent: the database will say when it has stopped
        except TimeoutError:
            pass
        except Exception:
            _Outage.failed(f"stopping answer {answer.pk}")
            await asyncio.sleep(quiet_period())
        stored = await look()
        if stored is None or not stored.is_streaming:
            return
