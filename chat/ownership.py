"""A person's conversation, message or answer by its id, or a 404: how every door reaches one.

The page, the REST API and the model-compose routes all look one up through here, so another
person's conversation or answer is "not found" on every URL, never "forbidden": a door does not
tell anyone which ids exist.
"""

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.shortcuts import aget_object_or_404, get_object_or_404

from chat.models import Conversation, Message, Someone


def signed_in(request: HttpRequest) -> User:
    """The person who sent the request, in a view that login_required lets no one else reach."""
    assert isinstance(request.user, User)
    return request.user


def conversation_or_404(user: Someone, pk: int) -> Conversation:
    return get_object_or_404(Conversation.objects.owned_by(user), pk=pk)


async def aconversation_or_404(user: Someone, pk: int) -> Conversation:
    return await aget_object_or_404(Conversation.objects.owned_by(user), pk=pk)


async def aanswer_or_404(user: Someone, pk: int, *, conversation_pk: int | None = None) -> Message:
    """The user's answer `pk`; with `conversation_pk`, only if it is in that conversation."""
    answers = Message.objects.answers_of(user)
    if conversation_pk is not None:
        answers = answers.filter(conversation=conversation_pk)
    return await aget_object_or_404(answers, pk=pk)


async def amessage_or_404(user: Someone, pk: int, *, conversation_pk: int, role: Message.Role | None = None) -> Message:
    """The user's message `pk` in conversation `conversation_pk` (a prompt or an answer, or either)."""
    messages = Message.objects.of(user).filter(conversation=conversation_pk)
    if role is not None:
        messages = messages.filter(role=role)
    return await aget_object_or_404(messages, pk=pk)
