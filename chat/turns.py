"""One place runs a chat turn; the page, the REST API, the CLI and the OpenAI endpoint all call it.

A turn saves the prompt and an empty answer in status "streaming" before anything can fail, then
generates the answer in a background task that belongs to this process, not to any request: a
browser that goes away stops following the answer, it does not stop the answer. Followers get the
text so far and then every delta, so a page opened mid-answer sees it growing live.

The answer is checkpointed at most every CHAT_CHECKPOINT_SECONDS and written in full once at the
end, so a turn's database work does not grow with the answer's length. Every turn ends in a stored,
explained state: complete, stopped, error or interrupted.

Running turns live in this process's memory: the site is served by one ASGI process (daphne), and
at start-up `recover_interrupted_turns` marks whatever a dead process left in "streaming".
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from chat.context import ContextTooLong, fit_context
from chat.models import Conversation, Message
from engine import vllm_client
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage

log = logging.getLogger(__name__)

TITLE_LENGTH = 60


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The last event a follower sees: the answer as stored, in its final status."""

    message: Message


type TurnEvent = TextDelta | TurnEnded


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
        outcome: dict[str, object] = {"status": Message.Status.COMPLETE}
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
                events: AsyncIterator[vllm_client.Event] = _single(Failed(str(exc)))
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
                            outcome["finish_reason"] = reason
                        case Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens):
                            outcome.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
                        case Failed(message=message):
                            outcome.update(status=Message.Status.ERROR, error=message)
        except asyncio.CancelledError:
            if self.stop_requested:
                outcome.update(status=Message.Status.STOPPED, finish_reason="stopped")
            else:
                outcome.update(
                    status=Message.Status.INTERRUPTED, error="The site shut down before this answer was finished."
                )
            raise
        except Exception as exc:
            log.exception("Turn %s failed", self.answer.pk)
            outcome.update(status=Message.Status.ERROR, error=f"The site failed while answering: {exc}")
        finally:
            outcome.update(time_to_first_token=first_token_after, duration=time.monotonic() - started)
            # Shielded: a stop or a shutdown cancels the task, and must not cancel the write that
            # records why it ended. Kept, for `stop_turn` to wait on (and as asyncio.shield asks).
            self.finishing = asyncio.ensure_future(self._finish(outcome))
            await asyncio.shield(self.finishing)

    async def _checkpoint(self) -> None:
        await Message.objects.filter(pk=self.answer.pk).aupdate(content="".join(self.parts), updated_at=timezone.now())

    async def _finish(self, outcome: dict[str, object]) -> None:
        fields = {**outcome, "content": "".join(self.parts), "updated_at": timezone.now()}
        try:
            await Message.objects.filter(pk=self.answer.pk).aupdate(**fields)
        except DatabaseError:
            log.exception("Could not save the end of turn %s", self.answer.pk)
        for name, value in fields.items():
            setattr(self.answer, name, value)
        _running.pop(self.answer.pk, None)
        self._publish(TurnEnded(self.answer))


async def _single(event: vllm_client.Event) -> AsyncIterator[vllm_client.Event]:
    yield event


async def _earlier_turns(conversation: Conversation, *, before: Message) -> list[dict[str, str]]:
    earlier = conversation.messages.usable_as_context().filter(pk__lt=before.pk)
    return [{"role": m.role, "content": m.content} async for m in earlier.only("role", "content")]


def options_for(conversation: Conversation) -> GenerationOptions:
    return GenerationOptions(
        temperature=conversation.temperature, max_tokens=conversation.max_tokens, top_p=conversation.top_p
    )


@sync_to_async
def _save_prompt_and_answer(conversation: Conversation, prompt: str, model_name: str) -> tuple[Message, Message]:
    with transaction.atomic():
        if not conversation.title:
            conversation.title = " ".join(prompt.split())[:TITLE_LENGTH]
        conversation.save()  # creates a new one, and moves an old one to the top of the list
        prompt_message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=prompt)
        answer = Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            model_name=model_name,
        )
    return prompt_message, answer


class Turn(NamedTuple):
    prompt: Message
    answer: Message


async def start_turn(conversation: Conversation, prompt: str) -> Turn:
    """Save the prompt and an empty answer, then generate the answer in the background.

    The answer starts in status "streaming"; `follow(answer)` streams it. Generation uses the
    conversation's settings, which are saved (with the conversation, if new) in the same
    transaction as the prompt.
    """
    # The model vLLM serves now answers, and the answer records it: vLLM refuses a request for any other.
    model = await vllm_client.served_model()
    prompt_message, answer = await _save_prompt_and_answer(conversation, prompt, model.id)
    running = RunningTurn(answer)
    _running[answer.pk] = running
    # A fresh context: the request's would tie the turn's database calls to the request's own
    # thread executor (asgiref's ThreadSensitiveContext), which closes when the response ends.
    running.task = asyncio.create_task(
        running.run(conversation, prompt_message, options_for(conversation), model), context=contextvars.Context()
    )
    return Turn(prompt_message, answer)


async def follow(answer: Message) -> AsyncIterator[TurnEvent]:
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


INTERRUPTED_TEXT = "The site stopped before this answer was finished."


def recover_interrupted_turns() -> int:
    """Mark answers left "streaming" by a process that died; call once at start-up."""
    try:
        return Message.objects.streaming().update(
            status=Message.Status.INTERRUPTED, error=INTERRUPTED_TEXT, updated_at=timezone.now()
        )
    except DatabaseError:
        # Not migrated yet: nothing can be left over.
        return 0
