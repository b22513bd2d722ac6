"""chat.turns: one place runs a chat turn; the page, the REST API, the CLI and the OpenAI endpoint all call it.

A turn is a prompt and its answer, an edited prompt and its answer (a new branch beside the old
one), or a new answer to a prompt (regenerating): all three start here, and run the same way.
A turn saves the prompt and an empty answer in status "streaming" before anything can fail, then
generates the answer in the background (chat/running_turn.py). Every turn ends in a stored,
explained state: complete, stopped, error or interrupted.

The site may run as several worker processes. The worker that starts a turn owns its answer
(chat/worker_jobs.py, chat/leases.py). Any worker can follow or stop any answer: one that it does
not generate is reached through the Channels layer (chat/relay.py), with the database as the truth
when a message is lost.

The parts: chat/turn_events.py (what followers get), chat/running_turn.py (the answer being generated),
chat/turn_storage.py (its reads and writes), chat/worker_jobs.py (this worker's leases and mailbox).
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, suppress
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import DatabaseError, transaction
from django.http import Http404
from django.utils.translation import gettext, gettext_noop

from chat import attachments, leases, limits, relay, turn_storage
from chat.leases import INTERRUPTED_TEXT as INTERRUPTED_TEXT
from chat.leases import WORKER, off_the_loop
from chat.models import Attachment, Conversation, Message
from chat.running_turn import UNSAVED_TEXT as UNSAVED_TEXT
from chat.running_turn import RunningTurn as RunningTurn
from chat.running_turn import _look as _look
from chat.running_turn import _running as _running
from chat.running_turn import options_for as options_for
from chat.turn_events import NoPrompt as NoPrompt
from chat.turn_events import Turn as Turn
from chat.turn_events import TurnDelta as TurnDelta
from chat.turn_events import TurnEnded as TurnEnded
from chat.turn_events import TurnEvent as TurnEvent
from chat.turn_storage import Place, _Branch, _record_stop, _save_earlier, _save_new, _tip, _tip_now, _touch
from chat.worker_jobs import _start_worker
from chat.worker_jobs import worker_started as worker_started
from chatsite.request_threads import give_back_connection
from engine import catalog

log = logging.getLogger(__name__)

# What a stop says when the answer's worker could not be reached at once (chat/relay.py `stop`).
STOP_PENDING_TEXT = gettext_noop("The stop is recorded; the answer stops in a moment.")


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


def _in_one_transaction[**P](save: Callable[P, RunningTurn]) -> Callable[P, RunningTurn]:
    """`save`, all or nothing: if its transaction does not commit, the answer it registered as
    running never existed, and is no longer registered. (`save` registers its answer last, so only
    this call's own answer is taken back, never one that another request registered meanwhile.)
    Then, committed, on the same thread hop, it reads the history the answer is asked with."""

    @functools.wraps(save)
    def saved(*args: P.args, **kwargs: P.kwargs) -> RunningTurn:
        running: RunningTurn | None = None
        try:
            with transaction.atomic():
                running = save(*args, **kwargs)
        except BaseException:
            if running is not None:
                _running.pop(running.answer.pk, None)
            raise
        with suppress(Exception):  # the turn reads them again as it starts, and fails there if it must
            prompt = running.answer.parent
            running.earlier = turn_storage.read_earlier_turns(prompt)  # type: ignore[arg-type]
            running.files = turn_storage.read_prompt_files(prompt, running.answer.conversation.owner_id)  # type: ignore[arg-type]
        return running

    return saved


@_in_one_transaction
def _save_prompt_and_answer(
    conversation: Conversation,
    prompt: str,
    place: Place,
    model_name: str,
    earlier: Sequence[tuple[str, str]],
    files: Sequence[Attachment] | int,
    loop: asyncio.AbstractEventLoop,
) -> RunningTurn:
    limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
    if conversation._state.adding:
        _save_new(conversation, prompt)
        place = None if place is _Branch.SHOWN else place
    elif place is _Branch.SHOWN and earlier:
        place = _tip_now(conversation)
    # The branch shown, read by the prompt's INSERT, which gives it back with the prompt's id.
    parent = _tip(conversation.pk) if place is _Branch.SHOWN else _save_earlier(conversation, earlier, after=place)
    prompt_message = Message.objects.create(
        conversation=conversation, parent_id=parent, role=Message.Role.USER, content=prompt
    )
    attachments.give_to(prompt_message, files)  # an edit: the edited prompt's id, whose files it keeps
    return _new_answer(conversation, prompt_message, model_name, loop, new_prompt=True)


@_in_one_transaction
def _save_answer(
    conversation: Conversation, prompt: Message, model_name: str, loop: asyncio.AbstractEventLoop
) -> RunningTurn:
    limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
    return _new_answer(conversation, prompt, model_name, loop, new_prompt=False)


async def _chosen(conversation: Conversation) -> catalog.Chosen:
    """The engine and model for the conversation's next answer (engine.catalog.pick)."""
    # Asking the engines may wait on the network and the database (their /v1/models and the admin's
    # engines, every TTL): the catalog gives the request's connection back to the pool before it waits.
    return await catalog.pick(conversation.model)


async def start_turn(
    conversation: Conversation,
    prompt: str,
    *,
    after: Message | None = None,
    earlier: Sequence[tuple[str, str]] = (),
    files: Sequence[Attachment] = (),
    named_by_model: bool = True,
) -> Turn:
    """Save the prompt (with `files`, the person's: chat/attachments.py) and an empty answer, then
    generate the answer in the background; the model then names a new conversation, unless not
    `named_by_model` (its first words stay its title).

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
        functools.partial(_save_prompt_and_answer, conversation, prompt, place, chosen.model.id, earlier, files),
        named_by_model,
    )


async def edit_prompt(conversation: Conversation, edited: Message, prompt: str) -> Turn:
    """Send `prompt` in place of the prompt `edited`: a new branch beside it, which is then shown.

    The earlier branch is kept, as a version of the prompt; the new prompt brings its files.
    """
    if edited.conversation_id != conversation.pk or edited.role != Message.Role.USER:
        raise ValueError("`edited` is not a prompt of this conversation")
    await _start_worker()
    chosen = await _chosen(conversation)
    return await _saved_and_run(
        conversation,
        chosen,
        None,
        functools.partial(
            _save_prompt_and_answer, conversation, prompt, edited.parent_id, chosen.model.id, (), edited.pk
        ),
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
    if prompt is not None:
        prompt.__dict__["kept_files"] = [file async for file in Attachment.objects.filter(message=prompt)]
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
    named_by_model: bool = True,
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
        running.names_conversation = named_by_model
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
    # pool's few) goes back now, not when the stream ends. What this follower reads later, it reads
    # on threads of its own.
    await give_back_connection()
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
    # The stop's reads and writes, and the end it waits for, take connections of their own (and
    # the answer's worker may be another): the request's goes back to the pool while it waits.
    await give_back_connection()
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
    await give_back_connection()  # `_look` takes a connection of its own (see `stop_turn`)
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
