"""Where a conversation sits in the sidebar: pinned at the top, in one of the person's folders, in
the list below them, or archived (out of the sidebar, still in search and exports, restorable).

Every door (the page, the REST API, an import) changes these through here, with the same rules
and limits. None of it touches `updated_at`: pinning or filing a conversation is not activity in
it, and the lists stay ordered by the last prompt or answer.
"""

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.translation import gettext

from chat import rules
from chat.models import Conversation, Folder, Someone

FOLDER_NAME_LENGTH = 100
# Limits on what one person can keep: each is drawn on every page of the chat.
MAX_FOLDERS = 100
MAX_PINNED = 50


class Refused(ValueError):
    """A change the rules do not allow; its message says why, in the reader's language."""


class Conflict(Refused):
    """Refused for what the person already has (a folder of that name, as many as there can be),
    not for what the request says: the API answers it 409."""


def folder_or_404(user: Someone, pk: int) -> Folder:
    # As chat/ownership.py: another person's folder is not found, never forbidden.
    owned = Folder.objects.filter(owner=user.pk) if user.is_authenticated else Folder.objects.none()
    return get_object_or_404(owned, pk=pk)


def clean_folder_name(text: str) -> str:
    name = " ".join(text.split())
    if not name:
        raise Refused(gettext("A folder needs a name."))
    if len(name) > FOLDER_NAME_LENGTH:
        raise Refused(gettext("A folder's name is at most %(limit)s characters.") % {"limit": FOLDER_NAME_LENGTH})
    try:
        return rules.storable(name)
    except ValidationError as exc:
        raise Refused(exc.messages[0]) from None


def _named(folder: Folder) -> Folder:
    try:
        with transaction.atomic():
            folder.save()
    except IntegrityError:
        raise Conflict(gettext("You already have a folder with this name.")) from None
    return folder


def create_folder(user: User, name: str) -> Folder:
    name = clean_folder_name(name)
    if Folder.objects.filter(owner=user.pk).count() >= MAX_FOLDERS:
        raise Conflict(gettext("You have %(limit)s folders, the most there can be.") % {"limit": MAX_FOLDERS})
    return _named(Folder(owner=user, name=name))


def rename_folder(folder: Folder, name: str) -> Folder:
    folder.name = clean_folder_name(name)
    return _named(folder)


def pin(conversation: Conversation, pinned: bool) -> None:
    if pinned and not conversation.pinned:
        count = Conversation.objects.filter(owner=conversation.owner_id).listed().filter(pinned=True).count()
        if count >= MAX_PINNED:
            raise Conflict(gettext("You have %(limit)s pinned chats, the most there can be.") % {"limit": MAX_PINNED})
    conversation.pinned = pinned
    conversation.save(update_fields=["pinned"])


def move(conversation: Conversation, folder: Folder | None) -> None:
    """Into `folder` (the person's own: the caller found it through folder_or_404), or out of any."""
    conversation.folder = folder
    conversation.save(update_fields=["folder"])


def archive(conversation: Conversation) -> None:
    if conversation.archived_at is None:
        conversation.archived_at = timezone.now()
        conversation.save(update_fields=["archived_at"])


def restore(conversation: Conversation) -> None:
    """Back where it was: pinned, or in its folder, or in the list."""
    conversation.archived_at = None
    conversation.save(update_fields=["archived_at"])


def archived_page(user: Someone, page: int, size: int) -> tuple[list[Conversation], bool]:
    """Page `page` (from 1) of the person's archived conversations, most recently archived first,
    and whether another page follows it."""
    start = (page - 1) * size
    archived = Conversation.objects.owned_by(user).archived().order_by("-archived_at", "-pk")
    found = list(archived[start : start + size + 1])  # one more, to know whether a page follows
    return found[:size], len(found) > size


def shelves_context(user: Someone) -> dict[str, object]:
    """What the sidebar shows above its list: the pinned conversations, and the folders (each read
    a page at a time when it is opened)."""
    if not user.is_authenticated:
        return {"pinned": [], "folders": []}
    pinned = Conversation.objects.owned_by(user).listed().filter(pinned=True).newest_first()[:MAX_PINNED]
    return {"pinned": list(pinned), "folders": list(Folder.objects.filter(owner=user))}


class ImportedPlaces:
    """Where an import puts each conversation, within the limits the page keeps: pinned while
    there is room, in a folder by name (the person's own, or a new one while there is room; saved
    with the import by `save_new`, so that a refused import leaves none behind)."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.known = {folder.name: folder for folder in Folder.objects.filter(owner=user.pk)}
        self.pins_left = MAX_PINNED - Conversation.objects.filter(owner=user.pk).listed().filter(pinned=True).count()

    def pin(self, pinned: bool, archived: bool) -> bool:
        if not pinned or archived:
            return pinned
        self.pins_left -= 1
        return self.pins_left >= 0

    def folder(self, name: str) -> Folder | None:
        if not (name := " ".join(name.split())[:FOLDER_NAME_LENGTH]):
            return None
        if name not in self.known and len(self.known) >= MAX_FOLDERS:
            return None  # left in the list
        return self.known.setdefault(name, Folder(owner=self.user, name=name))

    @staticmethod
    def save_new(conversations: list[Conversation]) -> None:
        for conversation in conversations:
            if (folder := conversation.folder) is not None and folder._state.adding:
                folder.save()
                conversation.folder = folder  # with its id, now known
