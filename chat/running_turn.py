"""chat.running_turn: `RunningTurn`, one answer being generated in this worker, and its followers.

A turn generates its answer in a background task of this worker process, not of any request: a
browser that goes away stops following the answer, it does not stop the answer. Followers get the
text so far and then every delta, so a page opened mid-answer sees it growing live.

The answer is checkpointed at most every CHAT_CHECKPOINT_SECONDS and written in full once at the
end, so a turn's database work does not grow with the answer's length. Whatever fails inside a turn
(vLLM, a bug, the final write itself), the answer ends with the text it had, the turn stops
running, and every follower gets `TurnEnded`. A database away for a while (a restart, a long lock)
only delays checkpoints and the final write, which are tried again; a final write that still cannot
be made leaves the whole text in the log, and says so.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from django.utils.translation import gettext_noop

from chat import leases, relay, titles
from chat.context import ContextTooLong
from chat.file_context import FileText, fit_with_files
from chat.leases import INTERRUPTED_TEXT, WORKER, off_the_loop
from chat.models import Conversation, Message
from chat.turn_events import TurnDelta, TurnEnded, TurnEvent
from chat.turn_storage import _earlier_turns, _prompt_files, _save_checkpoint, _save_end, _save_files_cut
from engine import catalog, vllm_client
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage

log = logging.getLogger("chat.turns")  # one log for a whole turn, whichever module of it writes

# Why an answer ended in error when even its end could not be saved: what was generated is not
# lost, it is in the log. Stored in English, as every answer's error is (when it can be stored).
UNSAVED_TEXT = gettext_noop("The site could not save this answer; its whole text is in the site's log.")


@dataclass(slots=True)
class Outcome:
    """How a turn ended, gathered while it runs; each field is the answer's field of that name."""

    status: Message.Status = Message.Status.COMPLETE
    finish_reason: str = ""
    error: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    time_to_first_token: float | None = None  # seconds
    duration: float | None = None  # seconds


class TurnLost(Exception):
    """The answer's row is no longer this worker's to write: deleted, or marked interrupted by a
    worker that found this one's lease expired."""


# The turns this process generates, by answer id. Also the strong references to their tasks, which
# asyncio keeps only weakly.
_running: dict[int, "RunningTurn"] = {}


class RunningTurn:
    def __init__(self, answer: Message, loop: asyncio.AbstractEventLoop) -> None:
        self.answer = answer
        self.loop = loop
        self.parts: list[str] = []
        self.length = 0
        self.stop_requested = False
        self.lost = False
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.finishing: asyncio.Task[None] | None = None
        self.ended: Message | None = None
        self.followers = 0
        # Set, and replaced by a fresh one, whenever there is news (a delta, the end): followers
        # keep no queue of their own, only how far they have read.
        self._news = asyncio.Event()
        self._over = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self.checkpoint_failing = False
        # The history the answer is asked with, when the thread that saved the turn read it too.
        self.earlier: list[dict[str, str]] | None = None
        self.files: tuple[list[FileText], bool] | None = None  # and its files, whether they may be cut
        # Whether the model names the conversation after this, its first answer (chat/titles.py).
        self.names_conversation = True

    def text(self) -> str:
        return "".join(self.parts)

    def _append(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        self._tell()

    def _tell(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    async def events(self, since: int = 0) -> AsyncGenerator[TurnEvent]:
        """The text from character `since` on, then each new delta, then `TurnEnded`.

        A follower holds only how far it has read, never a backlog of its own. When it reads, it
        gets everything that came since it last did as one delta: one that keeps up gets the
        deltas as vLLM sent them, one that has fallen behind (a busy site, a slow client) catches
        up in one event, and one write to its client, instead of one per delta. Nothing waits to be
        merged: the deltas are there already.
        """
        self.followers += 1
        try:
            text, read = self.text(), len(self.parts)
            offset = min(max(since, 0), len(text))
            if offset < len(text):
                yield TurnDelta(text[offset:], offset)
                offset = len(text)
            while True:
                news = self._news
                if len(self.parts) > read:
                    upto = len(self.parts)
                    new = self.parts[read] if upto == read + 1 else "".join(self.parts[read:upto])
                    read = upto
                    yield TurnDelta(new, offset)
                    offset += len(new)
                elif self.ended is not None:
                    yield TurnEnded(self.ended)
                    return
                else:
                    await news.wait()
        finally:
            self.followers -= 1

    async def run(
        self, conversation: Conversation, prompt: Message, options: GenerationOptions, chosen: catalog.Chosen
    ) -> None:
        started = time.monotonic()
        first_token_after: float | None = None
        last_checkpoint = started
        outcome = Outcome()
        try:
            # The first thing, with no await before it: a stop that comes before the task has
            # started cancels nothing (a coroutine cancelled before its first step skips its
            # `finally`), so it is read here instead.
            self.started = True
            if self.stop_requested:
                raise asyncio.CancelledError
            try:
                files, may_cut = self.files or await _prompt_files(prompt, conversation.owner_id)
                context, cuts = await fit_with_files(
                    system_prompt=conversation.system_prompt,
                    earlier=self.earlier if self.earlier is not None else await _earlier_turns(prompt),
                    prompt=prompt.content,
                    files=files,
                    max_tokens=options.max_tokens,
                    context_length=chosen.model.context_length,
                    cut=may_cut,
                    model=chosen.model.id,
                    endpoint=chosen.endpoint,
                )
                if cuts:  # said in the answer's footer: never cut silently
                    self.answer.files_cut = cuts
                    await _save_files_cut(self.answer.pk, cuts)
            except ContextTooLong as exc:
                events: AsyncGenerator[vllm_client.Event, None] = _single(Failed(str(exc)))
            else:
                # On the chosen engine, or once on another replica if that one is not reached.
                events = catalog.stream_chat(context.messages, options, chosen)
            # Closed on the way out, whatever the way: a stop or a failed write that lands during a
            # checkpoint finds the stream paused at a delta, and only closing it closes the
            # request to vLLM (which then frees its slot) now rather than when it is collected.
            async with aclosing(events):
                async for event in events:
                    match event:
                        case TextDelta(text=text):
                            if first_token_after is None:
                                first_token_after = time.monotonic() - started
                                # The checkpoints keep text at most CHAT_CHECKPOINT_SECONDS old:
                                # counted from the first text, not from the request, or a slow
                                # first token (a busy vLLM or site) would be written alone at once.
                                last_checkpoint = time.monotonic()
                            self._append(text)
                            if time.monotonic() - last_checkpoint >= settings.CHAT_CHECKPOINT_SECONDS:
                                await self._checkpoint()
                                last_checkpoint = time.monotonic()
                        case Finished(reason=reason):
                            outcome.finish_reason = reason
                        case Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens):
                            outcome.prompt_tokens = prompt_tokens
                            outcome.completion_tokens = completion_tokens
                        case Failed(message=message):
                            outcome.status = Message.Status.ERROR
                            outcome.error = message
        except asyncio.CancelledError:
            if self.stop_requested:
                outcome.status = Message.Status.STOPPED
                outcome.finish_reason = "stopped"
            else:
                outcome.status = Message.Status.INTERRUPTED
                outcome.error = INTERRUPTED_TEXT
            raise
        except TurnLost:
            log.warning("Turn %s is no longer this worker's: deleted, or taken for dead", self.answer.pk)
            outcome.status = Message.Status.INTERRUPTED
            outcome.error = INTERRUPTED_TEXT
        except Exception as exc:
            log.exception("Turn %s failed", self.answer.pk)
            outcome.status = Message.Status.ERROR
            outcome.error = f"The site failed while answering: {exc}"
        finally:
            outcome.time_to_first_token = first_token_after
            outcome.duration = time.monotonic() - started
            # Shielded: a stop or a shutdown cancels the task, and must not cancel the write that
            # records why it ended. Kept, as asyncio.shield asks.
            self.finishing = asyncio.ensure_future(self._finish(outcome))
            await asyncio.shield(self.finishing)

    async def _checkpoint(self) -> None:
        """Save the text so far, and renew the lease (a worker that checkpoints is alive).

        Only for durability: a database that fails for a while (a lock held long, a failover) is
        logged and tried again at the next checkpoint, while the answer goes on. Raises TurnLost if
        the row is no longer this worker's; stops the turn if another worker asked for a stop
        through the database (chat/relay.py).
        """
        try:
            saved = await _save_checkpoint(self.answer.pk, self.text())
        except DatabaseError:
            if not self.checkpoint_failing:
                log.warning("Could not checkpoint turn %s; trying again at the next", self.answer.pk, exc_info=True)
            self.checkpoint_failing = True
            return
        if self.checkpoint_failing:
            log.info("Checkpointed turn %s again", self.answer.pk)
            self.checkpoint_failing = False
        if saved == "lost":
            raise TurnLost
        if saved == "stop":
            self.stop_requested = True
            raise asyncio.CancelledError  # ends the turn as a stop from this worker does

    async def _finish(self, outcome: Outcome) -> None:
        fields: dict[str, Any] = {**asdict(outcome), "content": self.text(), "updated_at": timezone.now()}
        try:
            try:
                await self._save_end_retrying(fields)
            except (OperationalError, InterfaceError):
                raise  # the database stayed away through every retry: the same again would fail
            except Exception as exc:
                # One of the values may be what the database refused, so once more with only the
                # text and our own words.
                log.exception("Could not save the end of turn %s", self.answer.pk)
                fields = {
                    "status": Message.Status.ERROR,
                    "error": f"The site could not save the end of this answer: {exc}",
                    "content": fields["content"],
                    "updated_at": timezone.now(),
                }
                await self._save_end_retrying(fields)
        except Exception:
            # The row stays "streaming" with no turn running it, which the next look at it settles
            # as interrupted (`_look` here, or any worker once the lease has expired), with the
            # last checkpoint's text. The whole text is in the log, and its followers are told so.
            log.exception("Could not save turn %s at all", self.answer.pk)
            log.error("The text of turn %s, which could not be saved:\n%s", self.answer.pk, fields["content"])
            fields = {**fields, "status": Message.Status.ERROR, "error": UNSAVED_TEXT}
        finally:
            # Even when cancelled (a shutdown): no follower may wait for an end that never comes.
            for name, value in fields.items():
                setattr(self.answer, name, value)
            self.ended = self.answer
            _running.pop(self.answer.pk, None)
            # Started before the end is told, so a follower that then asks for the name finds it coming.
            if self.names_conversation:
                titles.name_after_first_answer(self.answer)
            self._tell()
            self._over.set()

    async def _save_end_retrying(self, fields: dict[str, Any]) -> None:
        """`_save_end`, tried again while the database is unreachable or locked, for up to
        CHAT_SAVE_RETRY_SECONDS (a PostgreSQL restart, a long SQLite lock); raises the last error after that."""
        deadline = time.monotonic() + settings.CHAT_SAVE_RETRY_SECONDS
        pause = 0.1
        while True:
            try:
                await _save_end(self.answer.pk, fields)
                return
            except (OperationalError, InterfaceError):
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("Could not save the end of turn %s; trying again", self.answer.pk, exc_info=True)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def request_stop(self) -> None:
        """Stop generating, keeping the text: the answer ends "stopped". Returns at once."""
        self.stop_requested = True
        if self.task is not None and self.started:
            self.task.cancel()

    async def stop(self) -> None:
        """`request_stop`, and return once the answer's end is stored."""
        self.request_stop()
        await self._over.wait()  # not the task: cancelling this stop must not cancel the turn's end

    def lose(self) -> None:
        """The row is no longer this worker's (see TurnLost): stop generating into it."""
        if self.ended is None and self.finishing is None:
            self.lost = True
            if self.task is not None and self.started:
                self.task.cancel()

    def publish_to_other_workers(self) -> None:
        """From now on, send each delta to the answer's group on the layer, for other workers'
        followers; started by the first one to ask, so a turn nobody follows elsewhere costs the
        layer nothing."""
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish(self.length), context=contextvars.Context())

    async def _publish(self, since: int) -> None:
        # A delta the layer fails to take is skipped, not the rest: followers elsewhere find the
        # gap by its offset and ask for it again (chat/relay.py).
        async with aclosing(self.events(since)) as events:
            async for event in events:
                if isinstance(event, TurnDelta):
                    await relay.publish(self.answer.pk, event.offset, event.text)
                else:
                    await relay.publish_end(self.answer.pk, self.length)


async def _single(event: vllm_client.Event) -> AsyncGenerator[vllm_client.Event, None]:
    yield event


def options_for(conversation: Conversation) -> GenerationOptions:
    return GenerationOptions(
        temperature=conversation.temperature, max_tokens=conversation.max_tokens, top_p=conversation.top_p
    )


@off_the_loop
def _look(pk: int) -> Message | None:
    """The answer as stored, settled: one that nothing generates any more (its owner's lease has
    expired, or its owner is this worker and runs no turn for it) is marked interrupted first.
    None if it has been deleted."""
    stored = Message.objects.filter(pk=pk).first()
    if stored is None or not stored.is_streaming:
        return stored
    orphan = stored.worker == WORKER and pk not in _running
    if (orphan and leases.interrupt_orphan(pk)) or leases.interrupt_expired(pk):
        stored.refresh_from_db()
    return stored
