"""One place runs a chat turn; the page, the REST API, the CLI and the OpenAI endpoint all call it.

A turn is a prompt and its answer, an edited prompt and its answer (a new branch beside the old
one), or a new answer to a prompt (regenerating): all three start here, and run the same way.
A turn saves the prompt and an empty answer in status "streaming" before anything can fail, then
generates the answer in a background task of this worker process, not of any request: a browser
that goes away stops following the answer, it does not stop the answer. Followers get the text so
far and then every delta, so a page opened mid-answer sees it growing live.

The answer is checkpointed at most every CHAT_CHECKPOINT_SECONDS and written in full once at the
end, so a turn's database work does not grow with the answer's length. Every turn ends in a stored,
explained state: complete, stopped, error or interrupted. Whatever fails inside a turn (vLLM, a
bug, the final write itself), the answer ends with the text it had, the turn stops running, and
every follower gets `TurnEnded`. A database away for a while (a restart, a long lock) only delays
checkpoints and the final write, which are tried again; a final write that still cannot be made
leaves the whole text in the log, and says so.

The site may run as several worker processes. The worker that starts a turn owns its answer: it
holds a lease on it in the database (chat/leases.py), renewed at each checkpoint and by a timer,
and only an answer whose lease has expired is marked interrupted, by whichever worker notices.
Any worker can follow or stop any answer: one that it does not generate is reached through the
Channels layer (chat/relay.py), with the database as the truth when a message is lost.
"""

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple

from asgiref.sync import async_to_sync, sync_to_async
from asgiref.typing import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from channels.db import aclose_old_connections
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

from chat import branches, leases, limits, relay, rules, titles
from chat.context import ContextTooLong, fit_context
from chat.leases import INTERRUPTED_TEXT as INTERRUPTED_TEXT
from chat.leases import WORKER, off_the_loop
from chat.models import Conversation, Message
from engine import catalog, vllm_client
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage

log = logging.getLogger(__name__)

# Why an answer ended in error when even its end could not be saved: what was generated is not
# lost, it is in the log. Stored in English, as every answer's error is (when it can be stored).
UNSAVED_TEXT = gettext_noop("The site could not save this answer; its whole text is in the site's log.")
# What a stop says when the answer's worker could not be reached at once (chat/relay.py `stop`).
STOP_PENDING_TEXT = gettext_noop("The stop is recorded; the answer stops in a moment.")


@dataclass(frozen=True, slots=True)
class TurnDelta(TextDelta):
    """A delta as a follower gets it: with the character offset in the answer where it starts, so
    that a client that reconnects can say how much it has (SSE's Last-Event-ID)."""

    offset: int = 0


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The last event a follower sees: the answer as stored, in its final status."""

    message: Message


type TurnEvent = TextDelta | TurnEnded


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
                context = await fit_context(
                    system_prompt=conversation.system_prompt,
                    earlier=await _earlier_turns(conversation, before=prompt),
                    prompt=prompt.content,
                    max_tokens=options.max_tokens,
                    context_length=chosen.model.context_length,
                    model=chosen.model.id,
                    endpoint=chosen.endpoint,
                )
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


async def _earlier_turns(conversation: Conversation, *, before: Message) -> list[dict[str, str]]:
    if before.parent_id is None:
        return []  # the conversation's first prompt: nothing to read
    return await _read_earlier_turns(conversation.pk, before.parent_id)


@off_the_loop
def _read_earlier_turns(conversation_pk: int, parent_pk: int | None) -> list[dict[str, str]]:
    # The prompt's own branch, whichever branch is shown now: a regenerated or edited turn is
    # answered with the history it was asked in.
    usable = Message.objects.filter(conversation=conversation_pk).usable_as_context()
    earlier = branches.branch_to(parent_pk, usable).only("role", "content")
    return [{"role": m.role, "content": m.content} for m in earlier]


def options_for(conversation: Conversation) -> GenerationOptions:
    return GenerationOptions(
        temperature=conversation.temperature, max_tokens=conversation.max_tokens, top_p=conversation.top_p
    )


# --- The turn's reads and writes: each on a thread with its own connection (see `off_the_loop`), the
# writes conditional on still owning the answer ---


@off_the_loop
def _save_checkpoint(pk: int, text: str) -> Literal["saved", "stop", "lost"]:
    """One UPDATE while all is well; "stop" if another worker has asked for a stop through the
    database, "lost" if the row is no longer this worker's."""
    mine = Message.objects.streaming().filter(pk=pk, worker=WORKER)
    if mine.filter(stop_requested_at=None).update(
        content=text, updated_at=timezone.now(), lease_until=leases.new_lease()
    ):
        return "saved"
    return "stop" if mine.exists() else "lost"


@off_the_loop
def _record_stop(pk: int) -> None:
    Message.objects.streaming().filter(pk=pk, stop_requested_at=None).update(stop_requested_at=timezone.now())


@off_the_loop
def _save_end(pk: int, fields: dict[str, Any]) -> None:
    mine = Message.objects.filter(pk=pk, worker=WORKER)
    if mine.streaming().update(**fields):
        return
    # Marked interrupted meanwhile by a worker that found this one's lease expired: that stays
    # (it was marked once, and said so), with all of the text this worker generated.
    mine.filter(status=Message.Status.INTERRUPTED).update(content=fields["content"])


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


class _Branch(Enum):
    SHOWN = "the branch shown"


# Where a prompt goes: after a message, first in the conversation (None), or after the tip of the
# branch shown when the turn starts.
type Place = int | Literal[_Branch.SHOWN] | None


def _tip_now(conversation: Conversation) -> int | None:
    """The tip of the branch shown, as stored now (another tab may have switched it)."""
    # A conversation whose messages were saved without a tip continues after the newest of them.
    newest = Message.objects.filter(conversation=OuterRef("pk")).order_by("-pk").values("pk")[:1]
    tips = Conversation.objects.filter(pk=conversation.pk).annotate(tip=Coalesce("branch_tip", Subquery(newest)))
    return tips.values_list("tip", flat=True).first()


def _save_earlier(conversation: Conversation, earlier: Sequence[tuple[str, str]], *, after: int | None) -> int | None:
    """Save (role, text) messages given as history, one after the other from `after`; the last one's id."""
    saved = Message.objects.bulk_create(
        Message(conversation=conversation, role=role, content=text, status=Message.Status.COMPLETE)
        for role, text in earlier
    )
    # Ids first (the databases give them back), then each one's parent.
    parents = [after, *(message.pk for message in saved)]
    for message, parent in zip(saved, parents, strict=False):
        message.parent_id = parent
    Message.objects.bulk_update(saved, ["parent"])
    return saved[-1].pk if saved else after


def _save_new(conversation: Conversation, prompt: str) -> None:
    """Save a conversation the turn starts, titled after its first prompt unless it has a title."""
    conversation.title = conversation.title or rules.title_from_prompt(prompt)
    conversation.save()


def _new_answer(
    conversation: Conversation,
    prompt: Message,
    model_name: str,
    loop: asyncio.AbstractEventLoop,
    *,
    new_prompt: bool,
) -> RunningTurn:
    answer = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model_name=model_name,
        worker=WORKER,
        lease_until=leases.new_lease(),
    )
    _touch(conversation, answer, prompt.content if new_prompt else None)
    # Registered before the commit (the caller's transaction): whoever reads the answer once it is
    # committed finds it running here, never a "streaming" answer that no turn runs.
    running = RunningTurn(answer, loop)
    _running[answer.pk] = running
    return running


def _touch(conversation: Conversation, answer: Message, prompt: str | None) -> None:
    """Show the branch ending at the new answer, on every page and door from now on, and move the
    conversation to the top of the list with the settings the answer uses: one UPDATE, after the
    answer's INSERT, since it needs the answer's id. Raises Http404 if the conversation has been
    deleted meanwhile (then the caller's transaction takes back the messages just inserted: their
    foreign keys are checked only at its commit)."""
    now = timezone.now()
    # Only what this turn changes: a full save would write back this copy's title and settings over
    # a rename or a change made since it was read.
    changed = {name: getattr(conversation, name) for name in conversation.changed_settings}
    conversations = Conversation.objects.filter(pk=conversation.pk)
    if not conversations.update(updated_at=now, branch_tip=answer, **changed):
        raise Http404("This conversation has been deleted.")
    conversation.branch_tip = answer
    conversation.updated_at = now
    # An untitled conversation is titled after a new prompt, not after a regenerated answer's.
    if prompt is not None and not conversation.title:
        title = rules.title_from_prompt(prompt)
        if conversations.filter(title="").update(title=title):
            conversation.title = title


def _in_one_transaction[**P](save: Callable[P, RunningTurn]) -> Callable[P, RunningTurn]:
    """`save`, all or nothing: if its transaction does not commit, the answer it registered as
    running never existed, and is no longer registered. (`save` registers its answer as its last
    step, so a `save` that raises has registered nothing; only this call's own answer is taken
    back, never one that another request registered meanwhile.)"""

    @functools.wraps(save)
    def saved(*args: P.args, **kwargs: P.kwargs) -> RunningTurn:
        running: RunningTurn | None = None
        try:
            with transaction.atomic():
                running = save(*args, **kwargs)
            return running
        except BaseException:
            if running is not None:
                _running.pop(running.answer.pk, None)
            raise

    return saved


@_in_one_transaction
def _save_prompt_and_answer(
    conversation: Conversation,
    prompt: str,
    place: Place,
    model_name: str,
    earlier: Sequence[tuple[str, str]],
    loop: asyncio.AbstractEventLoop,
) -> RunningTurn:
    limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
    if conversation._state.adding:
        _save_new(conversation, prompt)
        place = None if place is _Branch.SHOWN else place
    elif place is _Branch.SHOWN:
        place = _tip_now(conversation)
    place = _save_earlier(conversation, earlier, after=place)
    prompt_message = Message.objects.create(
        conversation=conversation, parent_id=place, role=Message.Role.USER, content=prompt
    )
    return _new_answer(conversation, prompt_message, model_name, loop, new_prompt=True)


@_in_one_transaction
def _save_answer(
    conversation: Conversation, prompt: Message, model_name: str, loop: asyncio.AbstractEventLoop
) -> RunningTurn:
    limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
    return _new_answer(conversation, prompt, model_name, loop, new_prompt=False)


class Turn(NamedTuple):
    prompt: Message
    answer: Message


class NoPrompt(Exception):
    """The answer follows no prompt (it was saved so, e.g. from an OpenAI request's history)."""


async def _chosen(conversation: Conversation) -> catalog.Chosen:
    """The engine and model for the conversation's next answer (engine.catalog.pick)."""
    # Asking the engines may wait on the network (their /v1/models every TTL, seconds when an engine
    # is busy). The connection the request's thread has used so far (its token's lookup, the
    # conversation's) goes back to PostgreSQL's pool first, so that starts waiting here hold none;
    # the save after takes one for its moment. (200 answers starting at once on a busy machine
    # exhausted a worker's 20 while a catalog refresh was slow: tests/test_workers.py's many-streams
    # test.) SQLite's connections are kept (CONN_MAX_AGE None): nothing to do.
    if not leases.one_at_a_time():
        await aclose_old_connections()
    return await catalog.pick(conversation.model)


async def start_turn(
    conversation: Conversation,
    prompt: str,
    *,
    after: Message | None = None,
    earlier: Sequence[tuple[str, str]] = (),
) -> Turn:
    """Save the prompt and an empty answer, then generate the answer in the background.

    The prompt follows `after` (a message of the conversation: the page says which, as the person
    sees it), by default the tip of the branch shown, and `earlier` (role, text) messages saved
    before it. The answer starts in status "streaming"; `follow(answer)` streams it. Generation
    uses the conversation's settings; those changed through `change_settings` are saved (with the
    conversation, if new) in the same transaction as the prompt.

    Raises chat.limits.TooManyAnswers, having saved nothing, when the conversation's owner may not
    start another answer now, engine.catalog.NoSuchModel, having saved nothing, when the
    conversation's model cannot be used now, and Http404 if the conversation has been deleted
    meanwhile; so do `edit_prompt` and `regenerate`.
    """
    if after is not None and after.conversation_id != conversation.pk:
        raise ValueError("`after` is a message of another conversation")
    await _start_worker()
    # The conversation's model answers (the default one if it names none), and the answer records it.
    chosen = await _chosen(conversation)
    place: Place = _Branch.SHOWN if after is None else after.pk
    return await _saved_and_run(
        conversation,
        chosen,
        None,
        functools.partial(_save_prompt_and_answer, conversation, prompt, place, chosen.model.id, earlier),
    )


async def edit_prompt(conversation: Conversation, edited: Message, prompt: str) -> Turn:
    """Send `prompt` in place of the prompt `edited`: a new branch beside it, which is then shown.

    The earlier branch is kept, as a version of the prompt.
    """
    if edited.conversation_id != conversation.pk or edited.role != Message.Role.USER:
        raise ValueError("`edited` is not a prompt of this conversation")
    await _start_worker()
    chosen = await _chosen(conversation)
    return await _saved_and_run(
        conversation,
        chosen,
        None,
        functools.partial(_save_prompt_and_answer, conversation, prompt, edited.parent_id, chosen.model.id, ()),
    )


async def regenerate(conversation: Conversation, answer: Message) -> Turn:
    """A new answer to the prompt `answer` answers, beside it, with the conversation's settings.

    The old answer is kept, as a version; the new one is shown. Raises NoPrompt for an answer that
    follows no prompt.
    """
    if answer.conversation_id != conversation.pk or answer.role != Message.Role.ASSISTANT:
        raise ValueError("`answer` is not an answer of this conversation")
    prompts = Message.objects.filter(role=Message.Role.USER)
    prompt = None if answer.parent_id is None else await prompts.filter(pk=answer.parent_id).afirst()
    if prompt is None:
        raise NoPrompt(gettext("This answer follows no prompt, so there is nothing to answer again."))
    await _start_worker()
    chosen = await _chosen(conversation)
    return await _saved_and_run(
        conversation, chosen, prompt, functools.partial(_save_answer, conversation, prompt, chosen.model.id)
    )


# Turns being saved and started for a caller that may be gone: asyncio holds tasks only weakly.
_starting: set[asyncio.Task[Turn]] = set()


async def _saved_and_run(
    conversation: Conversation,
    chosen: catalog.Chosen,
    prompt: Message | None,
    save: Callable[[asyncio.AbstractEventLoop], RunningTurn],
) -> Turn:
    """Save the turn's rows (`save`, on the request's own thread, or SQLite's one: see
    leases.one_at_a_time) and start generating, as one step.

    A caller cancelled meanwhile (a client that went away while the rows were being saved) cancels
    neither half: the answer it saved is generated and ends like any other, rather than left
    "streaming", registered here with no task to end it, which no stop, delete or follower could
    ever settle. `prompt` is the answer's prompt when it is not a new one.
    """
    loop = asyncio.get_running_loop()
    saving = off_the_loop(save) if leases.one_at_a_time() else sync_to_async(save)

    async def save_and_run() -> Turn:
        running = await saving(loop)
        asked = prompt or running.answer.parent
        assert asked is not None, "a new answer follows its prompt"
        return _run(conversation, asked, running, chosen)

    starting = asyncio.ensure_future(save_and_run())
    _starting.add(starting)
    starting.add_done_callback(_started)
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_failed_unheard)
        raise


def _started(starting: asyncio.Task[Turn]) -> None:
    _starting.discard(starting)
    if not starting.cancelled():
        starting.exception()  # read, so that a refusal nobody waits for any more is not logged as lost


def _failed_unheard(starting: asyncio.Task[Turn]) -> None:
    # Its caller has gone: a refusal needs nobody told, but a failure would otherwise vanish.
    if not starting.cancelled() and (exc := starting.exception()) is not None:
        if not isinstance(exc, limits.TooManyAnswers | Http404):
            log.error("A turn's start failed after its request had gone", exc_info=exc)


def _run(conversation: Conversation, prompt: Message, running: RunningTurn, chosen: catalog.Chosen) -> Turn:
    # A fresh context: the request's would tie the turn's database calls to the request's own
    # thread executor (asgiref's ThreadSensitiveContext), which closes when the response ends.
    running.task = asyncio.create_task(
        running.run(conversation, prompt, options_for(conversation), chosen), context=contextvars.Context()
    )
    return Turn(prompt, running.answer)


async def follow(answer: Message, since: int = 0) -> AsyncGenerator[TurnEvent, None]:
    """The answer's text from character `since` on (the text so far, as one delta), then each new
    delta, then `TurnEnded`; whichever worker generates it.

    Cancelling or closing the follower (the browser went away) leaves the turn running.
    """
    await _start_worker()
    # A follower may wait minutes: the connection its request used (with PostgreSQL, one of the
    # pool's few) goes back now, not when the stream ends. The request's own thread holds it, so
    # it is closed there; what this follower reads later, it reads on threads of its own.
    await aclose_old_connections()
    running = _running.get(answer.pk)
    if running is not None:
        async with aclosing(running.events(since)) as events:
            async for event in events:
                yield event
        return
    offset = max(since, 0)
    stored = await _look(answer.pk)
    while stored is not None and stored.is_streaming:
        # Generated by another worker (its lease is alive: `_look` settled it otherwise).
        async with aclosing(relay.follow(stored, offset, lambda: _look(answer.pk))) as pieces:
            async for start, text in pieces:
                yield TurnDelta(text, start)
                offset = start + len(text)
        stored = await _look(answer.pk)
    if stored is None:
        stored = _deleted(answer)
    if len(stored.content) > offset:
        yield TurnDelta(stored.content[offset:], offset)
    yield TurnEnded(stored)


def _deleted(answer: Message) -> Message:
    # Deleting an answer stops it, so one deleted while followed ends as stopped.
    answer.status = Message.Status.STOPPED if answer.is_streaming else answer.status
    return answer


async def stop_turn(answer: Message) -> Message:
    """Stop the answer's generation (closing the request to vLLM) and return it as stored, from
    whichever worker generates it.

    The partial text is kept and the status becomes "stopped". Stopping an answer that has already
    ended changes nothing.
    """
    await _start_worker()
    running = _running.get(answer.pk)
    if running is not None:
        await running.stop()
    elif (stored := await _look(answer.pk)) is not None and stored.is_streaming:
        # Recorded first: the owner honours it at its next checkpoint or lease renewal even if the
        # layer cannot reach it (Redis away).
        await _record_stop(answer.pk)
        await relay.stop(stored, lambda: _look(answer.pk))
    return await _look(answer.pk) or _deleted(answer)


async def stop_turns_in(conversation: Conversation) -> None:
    """Stop every answer still generating in the conversation, on whichever worker (before it is
    deleted: a turn must not go on writing into deleted rows)."""
    streaming = [answer async for answer in conversation.messages.streaming()]
    await asyncio.gather(*(stop_turn(answer) for answer in streaming))


async def current(answer: Message) -> Message:
    """The answer now: as stored (settled, see `_look`), with its live text if generated here
    (the database lags by up to a checkpoint)."""
    await _start_worker()
    stored = await _look(answer.pk) or _deleted(answer)
    if (running := _running.get(answer.pk)) is not None and stored.is_streaming:
        stored.content = running.text()
    return stored


def is_running(answer: Message) -> bool:
    """Whether this worker generates the answer now."""
    return answer.pk in _running


def answer_deleted(sender: type[Message], instance: Message, using: str, **kwargs: Any) -> None:
    """Deleting an answer that is being generated stops it, once the delete is committed (a
    post_delete signal: see chat/apps.py)."""
    if instance.is_streaming:
        pk, worker = instance.pk, instance.worker
        transaction.on_commit(lambda: stop_deleted(pk, worker), using=using)


def stop_deleted(pk: int, worker: str) -> None:
    """Stop generating answer `pk`, which has just been deleted (from any thread: a signal calls
    this). Returns at once; the owner would also find out by itself at its next checkpoint or
    lease renewal."""
    running = _running.get(pk)
    if running is not None:
        running.loop.call_soon_threadsafe(running.request_stop)
    elif worker and worker != WORKER:
        async_to_sync(relay.send)(worker, {"type": "turn.stop", "answer": pk, "reply_to": None})


def recover_interrupted_turns() -> int:
    """Mark interrupted the answers whose worker died (their lease has expired); a worker's start
    does it once, and every worker does it again as it runs. Live answers are left alone."""
    try:
        return leases.interrupt_expired()
    except DatabaseError:
        # Not migrated yet: nothing can be left over.
        return 0


# --- This process as a worker: its leases and its mailbox ---------------------------------------

_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_tasks: set[asyncio.Task[None]] = set()


def worker_started(application: ASGI3Application) -> ASGI3Application:
    """The ASGI application, starting this worker's own jobs (`_start_worker`) at its first call."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await _start_worker()
        await application(scope, receive, send)

    return app


async def _start_worker() -> None:
    """Start, once per event loop, what this worker does besides its turns: renewing its leases
    (and marking dead workers' answers interrupted), and answering other workers' requests."""
    global _worker_loop
    loop = asyncio.get_running_loop()
    if _worker_loop is loop:
        return
    _worker_loop = loop
    _worker_tasks.clear()
    for job in (_keep_leases(loop), relay.listen(_answer_request)):
        task = loop.create_task(job, context=contextvars.Context())
        task.add_done_callback(_worker_job_ended)
        _worker_tasks.add(task)


def _worker_job_ended(task: asyncio.Task[None]) -> None:
    # Held in _worker_tasks, a failed job would never be collected, so never reported: say it now.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("This worker's %s stopped", task.get_coro(), exc_info=exc)


async def _keep_leases(loop: asyncio.AbstractEventLoop) -> None:
    while True:
        await asyncio.sleep(settings.CHAT_LEASE_SECONDS / 3)
        try:
            mine = {pk: turn for pk, turn in list(_running.items()) if turn.loop is loop and turn.finishing is None}
            renewed = await leases.on_the_lease_thread(leases.renew)(list(mine))
            for pk in renewed.lost:
                mine[pk].lose()
            for pk in renewed.stop:
                mine[pk].request_stop()
            await leases.on_the_lease_thread(leases.interrupt_expired)()
        except Exception:
            # The database is away for now: try again next time, well within the lease.
            log.exception("Could not renew this worker's leases")


async def _answer_request(message: dict[str, Any]) -> None:
    """Another worker asks about an answer this one generates (chat/relay.py)."""
    try:
        match message:
            case {"type": "turn.follow", "answer": int(pk), "since": int(since), "reply_to": str(reply_to)}:
                running = _running.get(pk)
                if running is None or running.ended is not None:
                    await relay.send(reply_to, {"type": "turn.text", "offset": since, "text": "", "running": False})
                    return
                text = running.text()
                since = min(max(since, 0), len(text))
                running.publish_to_other_workers()
                reply = {"type": "turn.text", "offset": since, "text": text[since:], "running": True}
                await relay.send(reply_to, reply)
            case {"type": "turn.stop", "answer": int(pk), "reply_to": reply_to}:
                if (running := _running.get(pk)) is not None:
                    await running.stop()
                if reply_to:
                    await relay.send(reply_to, {"type": "turn.stopped"})
    except Exception:
        log.exception("Could not answer %s", message.get("type"))
