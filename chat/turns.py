"""One place runs a chat turn; the page, the REST API, the CLI and the OpenAI endpoint all call it.

A turn is a prompt and its answer, an edited prompt and its answer (a new branch beside the old
one), or a new answer to a prompt (regenerating): all three start here, and run the same way.
A turn saves the prompt and an empty answer in status "streaming" before anything can fail, then
generates the answer in a background task that belongs to this process, not to any request: a
browser that goes away stops following the answer, it does not stop the answer. Followers get the
text so far and then every delta, so a page opened mid-answer sees it growing live.

The answer is checkpointed at most every CHAT_CHECKPOINT_SECONDS and written in full once at the
end, so a turn's database work does not grow with the answer's length. Every turn ends in a stored,
explained state: complete, stopped, error or interrupted. Whatever fails inside a turn (vLLM, a
checkpoint, a bug, the final write itself), the answer ends with the text it had, the turn stops
running, and every follower gets `TurnEnded`.

Running turns live in this process's memory: the site is served by one ASGI process (daphne), and
at start-up `recover_interrupted_turns` marks whatever a dead process left in "streaming".
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Literal, NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

from chat import branches, limits, rules, titles
from chat.context import ContextTooLong, fit_context
from chat.models import Conversation, Message
from engine import vllm_client
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage

log = logging.getLogger(__name__)

# Why an answer is "interrupted": the process running it ended (a shutdown, or a crash found at
# the next start-up) before it did.
# Stored in English, as every answer's error is; the page says it in the reader's language.
INTERRUPTED_TEXT = gettext_noop("The site stopped before this answer was finished.")


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


# Strong references to the running tasks: asyncio keeps only weak ones.
_running: dict[int, "RunningTurn"] = {}


class RunningTurn:
    def __init__(self, answer: Message) -> None:
        self.answer = answer
        self.parts: list[str] = []
        self.stop_requested = False
        self.task: asyncio.Task[None] | None = None
        self.finishing: asyncio.Task[None] | None = None
        self._followers: set[asyncio.Queue[TurnEvent]] = set()

    def subscribe(self) -> asyncio.Queue[TurnEvent]:
        # No await between reading the text so far and joining: no delta can fall in between.
        queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        if self.parts:
            queue.put_nowait(TextDelta("".join(self.parts)))
        self._followers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[TurnEvent]) -> None:
        self._followers.discard(queue)

    def _publish(self, event: TurnEvent) -> None:
        for queue in self._followers:
            queue.put_nowait(event)

    async def run(
        self, conversation: Conversation, prompt: Message, options: GenerationOptions, model: vllm_client.ServedModel
    ) -> None:
        started = time.monotonic()
        first_token_after: float | None = None
        last_checkpoint = started
        outcome = Outcome()
        try:
            try:
                context = await fit_context(
                    system_prompt=conversation.system_prompt,
                    earlier=await _earlier_turns(conversation, before=prompt),
                    prompt=prompt.content,
                    max_tokens=options.max_tokens,
                    context_length=model.context_length,
                )
            except ContextTooLong as exc:
                events: AsyncGenerator[vllm_client.Event, None] = _single(Failed(str(exc)))
            else:
                events = vllm_client.stream_chat(context.messages, options, model=model.id)
            # Closed on the way out, whatever the way: a stop or a failed write that lands during a
            # checkpoint finds the stream paused at a delta, and only closing it closes the
            # request to vLLM (which then frees its slot) now rather than when it is collected.
            async with aclosing(events):
                async for event in events:
                    match event:
                        case TextDelta(text=text):
                            if first_token_after is None:
                                first_token_after = time.monotonic() - started
                            self.parts.append(text)
                            self._publish(event)
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
        except Exception as exc:
            log.exception("Turn %s failed", self.answer.pk)
            outcome.status = Message.Status.ERROR
            outcome.error = f"The site failed while answering: {exc}"
        finally:
            outcome.time_to_first_token = first_token_after
            outcome.duration = time.monotonic() - started
            # Shielded: a stop or a shutdown cancels the task, and must not cancel the write that
            # records why it ended. Kept, for `stop_turn` to wait on (and as asyncio.shield asks).
            self.finishing = asyncio.ensure_future(self._finish(outcome))
            await asyncio.shield(self.finishing)

    async def _checkpoint(self) -> None:
        await Message.objects.filter(pk=self.answer.pk).aupdate(content="".join(self.parts), updated_at=timezone.now())

    async def _finish(self, outcome: Outcome) -> None:
        fields = {**asdict(outcome), "content": "".join(self.parts), "updated_at": timezone.now()}
        try:
            try:
                await Message.objects.filter(pk=self.answer.pk).aupdate(**fields)
            except Exception as exc:
                # Any error at all: one of the values may be what the database refused, so once
                # more with only the text and our own words. If that fails too, the row stays
                # "streaming" with no turn running it, which the next look at it (`_settled`, or
                # `recover_interrupted_turns`) settles as interrupted.
                log.exception("Could not save the end of turn %s", self.answer.pk)
                fields = {
                    "status": Message.Status.ERROR,
                    "error": f"The site could not save the end of this answer: {exc}",
                    "content": fields["content"],
                    "updated_at": timezone.now(),
                }
                await Message.objects.filter(pk=self.answer.pk).aupdate(**fields)
        except Exception:
            log.exception("Could not save turn %s at all", self.answer.pk)
        finally:
            # Even when cancelled (a shutdown): no follower may wait for an end that never comes.
            for name, value in fields.items():
                setattr(self.answer, name, value)
            _running.pop(self.answer.pk, None)
            # Started before the end is told, so a follower that then asks for the name finds it coming.
            titles.name_after_first_answer(self.answer)
            self._publish(TurnEnded(self.answer))


async def _single(event: vllm_client.Event) -> AsyncGenerator[vllm_client.Event, None]:
    yield event


async def _earlier_turns(conversation: Conversation, *, before: Message) -> list[dict[str, str]]:
    # The prompt's own branch, whichever branch is shown now: a regenerated or edited turn is
    # answered with the history it was asked in.
    earlier = branches.branch_to(before.parent_id, conversation.messages.usable_as_context())
    return [{"role": m.role, "content": m.content} async for m in earlier.only("role", "content")]


def options_for(conversation: Conversation) -> GenerationOptions:
    return GenerationOptions(
        temperature=conversation.temperature, max_tokens=conversation.max_tokens, top_p=conversation.top_p
    )


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


def _new_answer(conversation: Conversation, prompt: Message, model_name: str) -> Message:
    answer = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model_name=model_name,
    )
    # The new answer is the branch shown, on every page and door, from now on.
    Conversation.objects.filter(pk=conversation.pk).update(branch_tip=answer)
    conversation.branch_tip = answer
    return answer


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


@sync_to_async
def _save_prompt_and_answer(
    conversation: Conversation,
    prompt: str,
    place: Place,
    model_name: str,
    earlier: Sequence[tuple[str, str]] = (),
) -> tuple[Message, Message]:
    with transaction.atomic():
        limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
        if not conversation.title:
            conversation.title = rules.title_from_prompt(prompt)
        if place is _Branch.SHOWN:
            place = _tip_now(conversation) if conversation.pk else None
        conversation.save()  # creates a new one, and moves an old one to the top of the list
        place = _save_earlier(conversation, earlier, after=place)
        prompt_message = Message.objects.create(
            conversation=conversation, parent_id=place, role=Message.Role.USER, content=prompt
        )
        return prompt_message, _new_answer(conversation, prompt_message, model_name)


@sync_to_async
def _save_answer(conversation: Conversation, prompt: Message, model_name: str) -> Message:
    with transaction.atomic():
        limits.check_room_for_an_answer(conversation.owner_id)  # refused: nothing is saved
        conversation.save()  # moves it to the top of the list, with the settings the answer uses
        return _new_answer(conversation, prompt, model_name)


class Turn(NamedTuple):
    prompt: Message
    answer: Message


class NoPrompt(Exception):
    """The answer follows no prompt (it was saved so, e.g. from an OpenAI request's history)."""


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
    uses the conversation's settings, which are saved (with the conversation, if new) in the same
    transaction as the prompt.

    Raises chat.limits.TooManyAnswers, having saved nothing, when the conversation's owner may not
    start another answer now; so do `edit_prompt` and `regenerate`.
    """
    if after is not None and after.conversation_id != conversation.pk:
        raise ValueError("`after` is a message of another conversation")
    # The model vLLM serves now answers, and the answer records it: vLLM refuses a request for any other.
    model = await vllm_client.served_model()
    prompt_message, answer = await _save_prompt_and_answer(
        conversation, prompt, _Branch.SHOWN if after is None else after.pk, model.id, earlier
    )
    return _run(conversation, prompt_message, answer, model)


async def edit_prompt(conversation: Conversation, edited: Message, prompt: str) -> Turn:
    """Send `prompt` in place of the prompt `edited`: a new branch beside it, which is then shown.

    The earlier branch is kept, as a version of the prompt.
    """
    if edited.conversation_id != conversation.pk or edited.role != Message.Role.USER:
        raise ValueError("`edited` is not a prompt of this conversation")
    model = await vllm_client.served_model()
    prompt_message, answer = await _save_prompt_and_answer(conversation, prompt, edited.parent_id, model.id)
    return _run(conversation, prompt_message, answer, model)


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
    model = await vllm_client.served_model()
    return _run(conversation, prompt, await _save_answer(conversation, prompt, model.id), model)


def _run(conversation: Conversation, prompt: Message, answer: Message, model: vllm_client.ServedModel) -> Turn:
    running = RunningTurn(answer)
    _running[answer.pk] = running
    # A fresh context: the request's would tie the turn's database calls to the request's own
    # thread executor (asgiref's ThreadSensitiveContext), which closes when the response ends.
    running.task = asyncio.create_task(
        running.run(conversation, prompt, options_for(conversation), model), context=contextvars.Context()
    )
    return Turn(prompt, answer)


async def follow(answer: Message) -> AsyncGenerator[TurnEvent, None]:
    """The answer's text so far as one delta, then each new delta, then `TurnEnded`.

    Cancelling the follower (the browser went away) leaves the turn running.
    """
    running = _running.get(answer.pk)
    if running is None:
        stored = await _settled(answer)
        if stored.content:
            yield TextDelta(stored.content)
        yield TurnEnded(stored)
        return
    queue = running.subscribe()
    try:
        while True:
            event = await queue.get()
            yield event
            if isinstance(event, TurnEnded):
                return
    finally:
        running.unsubscribe(queue)


async def _settled(answer: Message) -> Message:
    stored = await Message.objects.aget(pk=answer.pk)
    if stored.is_streaming and stored.pk not in _running:
        # No task in this process runs it, and this process is the only one that runs turns.
        await Message.objects.filter(pk=stored.pk, status=Message.Status.STREAMING).aupdate(
            status=Message.Status.INTERRUPTED, error=INTERRUPTED_TEXT, updated_at=timezone.now()
        )
        await stored.arefresh_from_db()
    return stored


async def stop_turn(answer: Message) -> Message:
    """Cancel the answer's generation (closing the request to vLLM) and return it as stored.

    The partial text is kept and the status becomes "stopped". Stopping an answer that has already
    ended changes nothing.
    """
    running = _running.get(answer.pk)
    if running is not None and running.task is not None:
        running.stop_requested = True
        running.task.cancel()
        await asyncio.wait({running.task})
        if running.finishing is not None:
            # A stop that lands during the final write ends the task before the write is done.
            await asyncio.wait({running.finishing})  # not `await`: cancelling this stop must not cancel it
    return await _settled(answer)


async def stop_turns_in(conversation: Conversation) -> None:
    for running in [r for r in _running.values() if r.answer.conversation_id == conversation.pk]:
        await stop_turn(running.answer)


def is_running(answer: Message) -> bool:
    return answer.pk in _running


def text_so_far(answer: Message) -> str:
    """The answer's text now: live while it streams here (the database lags by a checkpoint)."""
    running = _running.get(answer.pk)
    return "".join(running.parts) if running else answer.content


def recover_interrupted_turns() -> int:
    """Mark answers left "streaming" by a process that died; call once at start-up."""
    try:
        return Message.objects.streaming().update(
            status=Message.Status.INTERRUPTED, error=INTERRUPTED_TEXT, updated_at=timezone.now()
        )
    except DatabaseError:
        # Not migrated yet: nothing can be left over.
        return 0
