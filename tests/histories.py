"""Long histories written straight to the database (bulk inserts), for the tests and the benchmark
of paging (tests/chat/test_long_histories.py, bench/long_histories.py): a thousand messages through
the site would take minutes."""

from datetime import timedelta
from itertools import pairwise

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, Message


def text_of(n: int) -> str:
    """Message n's text: its number says where it is on the branch."""
    return f"Question {n}?" if n % 2 == 0 else f"Answer {n}, with **markdown** and `code`."


@transaction.atomic
def long_conversation(owner: User, messages: int, *, title: str = "A long one") -> Conversation:
    """One branch of `messages` messages, prompts and answers by turns, numbered from 0; it is shown."""
    conversation = Conversation.objects.create(owner=owner, title=title)
    chain = Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role=Message.Role.USER if n % 2 == 0 else Message.Role.ASSISTANT,
            content=text_of(n),
        )
        for n in range(messages)
    )
    # Each reply's parent is the message before it: known once they have ids.
    for parent, reply in pairwise(chain):
        reply.parent = parent
    Message.objects.bulk_update(chain[1:], ["parent"], batch_size=500)
    Conversation.objects.filter(pk=conversation.pk).update(branch_tip=chain[-1] if chain else None)
    conversation.refresh_from_db()
    return conversation


def fork(conversation: Conversation, at: Message, length: int) -> list[Message]:
    """Another branch from `at`'s parent: a version of `at` and `length - 1` messages below it."""
    parent = at.parent
    made = []
    for n in range(length):
        role = at.role if n % 2 == 0 else ({"user": "assistant", "assistant": "user"}[at.role])
        parent = Message.objects.create(conversation=conversation, parent=parent, role=role, content=f"Fork {n}")
        made.append(parent)
    return made


@transaction.atomic
def many_conversations(owner: User, count: int) -> list[Conversation]:
    """`count` conversations titled "Chat 0" (the oldest) to "Chat <count - 1>" (the newest), a
    second apart; every tenth pair shares its `updated_at`, as two saves in the same microsecond
    would, so that paging has ties to order by id."""
    made = Conversation.objects.bulk_create(Conversation(owner=owner, title=f"Chat {n}") for n in range(count))
    start = timezone.now() - timedelta(seconds=count)
    for n, conversation in enumerate(made):
        conversation.updated_at = start + timedelta(seconds=n - (n % 2 if n % 20 < 2 else 0))
    # bulk_update, not save(): `auto_now` would set them all to now.
    Conversation.objects.bulk_update(made, ["updated_at"], batch_size=500)
    return made
