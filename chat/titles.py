"""The model names a conversation after its first answer, in the background.

The first prompt's first words are the title from the start (chat/turns.py); once the first answer
is complete, the model is asked for a few words in the conversation's language, which replace them.
Nothing waits for that: the answer has already ended, and when the model is down or says nothing
usable the first words stay. A title the person gave (`title_set_by_person`) is never replaced,
even one given while the model was still thinking: the write checks it in the same statement.

The page learns of the name by asking for the conversation's sidebar item once the answer is done
(`wait_for_name`, chat/views.py `title`); the request waits for the naming here, in this process.
"""

import asyncio
import contextvars
import logging

from chat import rules
from chat.leases import off_the_loop
from chat.models import Conversation, Message
from chatsite.request_threads import give_back_connection
from engine import catalog, vllm_client
from engine.vllm_client import Failed, GenerationOptions

log = logging.getLogger(__name__)

NAMING_INSTRUCTION = "Name this conversation in at most 6 words, in its language. Answer with the title only."
# A few words need few tokens; a little randomness, not much.
NAMING_OPTIONS = GenerationOptions(temperature=0.2, max_tokens=24, top_p=1.0)
# How much of the first prompt and answer the model reads to name them: enough to tell the subject.
EXCERPT_CHARS = 1500

# How long the page's request for the name waits for it; the first words stay on the page after that.
NAMING_WAIT = 30.0

# The namings running in this process, by conversation; also asyncio's strong references to them.
_naming: dict[int, asyncio.Task[None]] = {}


def name_after_first_answer(answer: Message) -> None:
    """Start naming the answer's conversation in the background if the answer is its first, and complete."""
    if answer.status != Message.Status.COMPLETE or answer.conversation_id in _naming:
        return
    # A fresh context, like the turn's own task: no request's executor to outlive.
    task = asyncio.create_task(
        _name(answer.conversation_id, answer.pk, answer.model_name), context=contextvars.Context()
    )
    _naming[answer.conversation_id] = task
    task.add_done_callback(lambda _: _naming.pop(answer.conversation_id, None))


async def _name(conversation_pk: int, answer_pk: int, model: str) -> None:
    """Name the conversation with the model that wrote its first answer (`model`), on an engine
    serving it now."""
    try:
        if (first_turn := await _first_turn(conversation_pk, answer_pk)) is None:
            return
        prompt, answer = first_turn
        try:
            chosen = await catalog.pick(model)
        except catalog.NoSuchModel as exc:
            log.info("Conversation %s keeps its first words as title: %s", conversation_pk, exc.message)
            return
        named = await vllm_client.complete(
            [
                {"role": "system", "content": NAMING_INSTRUCTION},
                {"role": "user", "content": f"{prompt[:EXCERPT_CHARS]}\n\n---\n\n{answer[:EXCERPT_CHARS]}"},
            ],
            NAMING_OPTIONS,
            model=chosen.model.id,
            endpoint=chosen.endpoint,
        )
        if isinstance(named, Failed):
            log.info("Conversation %s keeps its first words as title: %s", conversation_pk, named.message)
            return
        if title := rules.title_from_model(named):
            await _save_title(conversation_pk, title)
    except Exception:
        log.exception("Could not name conversation %s", conversation_pk)


# The naming's reads and writes run as the turn's do (`off_the_loop`), each on a connection closed
# after it: from its fresh context, the async ORM would run them on asgiref's one shared thread, on
# a connection never closed (with PostgreSQL, held out of the pool, and broken for good once the
# database restarts).


@off_the_loop
def _first_turn(conversation_pk: int, answer_pk: int) -> tuple[str, str] | None:
    """The texts of the conversation's first prompt and answer, if `answer_pk` is that answer and
    the person has not titled the conversation."""
    messages = list(Message.objects.filter(conversation_id=conversation_pk).in_order()[:3])
    # The first answer only: the prompt before it and it, and nothing else yet.
    if [m.role for m in messages] != [Message.Role.USER, Message.Role.ASSISTANT] or messages[1].pk != answer_pk:
        return None
    if Conversation.objects.filter(pk=conversation_pk, title_set_by_person=True).exists():
        return None
    return messages[0].content, messages[1].content


@off_the_loop
def _save_title(conversation_pk: int, title: str) -> None:
    # Not `save()`: the naming must neither move the conversation in the list nor undo a rename
    # that landed meanwhile.
    Conversation.objects.filter(pk=conversation_pk, title_set_by_person=False).update(title=title)


async def wait_for_name(conversation_pk: int) -> None:
    """Return once the conversation's naming, if one runs here, has ended, or after a while."""
    if (task := _naming.get(conversation_pk)) is None:
        return
    # The naming saves the title with a connection of its own: the request's goes back to the pool
    # while it waits (chatsite/request_threads.py `give_back_connection`).
    await give_back_connection()
    await asyncio.wait({task}, timeout=NAMING_WAIT)  # not `await`: a follower leaving must not cancel it
