"""Sharing a conversation by link: a read-only copy of the branch shown, as it was when shared.

The link (chat.models.SharedLink) keeps its own copy of the branch's prompts and answers, so what
its readers see does not follow later turns, edits or another branch, and never holds what is not
on that branch: no other versions, no settings, no system prompt (which is a setting, not a
message), no model or figures. Sharing again refreshes the copy and keeps the address. Revoking
deletes the link: its address is then a 404, as a token no one made is.

The token is `secrets.token_urlsafe(32)` (256 random bits): the address is the secret, as an
unlisted document's is. It is stored as it is so that its owner can copy the address again from
the account page; whoever can read the database can read the conversations anyway.

"Continue in my chats" copies the link's messages into a new conversation of the reader's, with the
site's default settings: the sharer's settings were never in the link.
"""

import secrets
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import attachments
from chat.branches import shown_branch
from chat.models import Conversation, Message, SharedLink, Someone

# The characters `token_urlsafe` uses: a token of any other shape matches no URL (chat/urls.py).
TOKEN_PATTERN = "[A-Za-z0-9_-]{20,64}"


def snapshot(conversation: Conversation) -> list[dict[str, Any]]:
    """The branch the conversation shows, as a reader of the link sees it: each prompt, and each
    answer that has ended with some text (one still being written is left out, not half-shared).

    A prompt's files by name and size, as its owner sees them under the prompt; never their text
    or bytes, which are served to their owner alone (chat/file_views.py).
    """
    shared = []
    for message, _versions in shown_branch(conversation):
        if message.role == Message.Role.USER or (not message.is_streaming and message.content):
            copy: dict[str, Any] = {"role": message.role, "content": message.content}
            if files := attachments.files_read_with(message):
                copy["files"] = [{"name": file.name, "size": file.size} for file in files]
            shared.append(copy)
    return shared


def share(conversation: Conversation, audience: SharedLink.Audience) -> SharedLink:
    """Share the branch shown now, for `audience`: a new link, or the conversation's link with a
    fresh copy (the same address)."""
    copy = {"audience": audience, "title": conversation.title, "messages": snapshot(conversation)}
    link, _created = SharedLink.objects.update_or_create(
        conversation=conversation,
        # A link shared again: the copy is new, so is its date (a new link's is its default, now).
        defaults={**copy, "shared_at": timezone.now()},
        create_defaults={**copy, "token": secrets.token_urlsafe(32)},
    )
    return link


def find(token: str) -> SharedLink | None:
    """The link with this token; None for a token no link has (revoked, never made, or its owner
    deactivated). Whether a reader may read it is `may_read`: a signed-out reader of a signed-in
    link is sent to sign in."""
    # A person deactivated in the admin shares nothing any more, as their tokens stop working.
    return SharedLink.objects.filter(token=token, conversation__owner__is_active=True).first()


def may_read(link: SharedLink, reader: Someone) -> bool:
    return link.audience == SharedLink.Audience.ANYONE or reader.is_authenticated


def unshare(conversation: Conversation) -> None:
    SharedLink.objects.filter(conversation=conversation).delete()


@transaction.atomic
def continue_in(link: SharedLink, reader: User) -> Conversation:
    """A new conversation of the reader's holding the link's messages, each following the one before."""
    copy = Conversation.objects.create(owner=reader, title=link.title)
    parent: Message | None = None
    for shared in link.messages:
        parent = Message.objects.create(
            conversation=copy, parent=parent, role=shared["role"], content=shared["content"]
        )
    if parent is not None:
        copy.branch_tip = parent
        copy.save(update_fields=["branch_tip"])
    return copy
