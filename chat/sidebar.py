"""The list of a person's conversations, newest first, a page at a time.

The page shows the first page; the list's last item asks for the next as it scrolls into view.
Pages follow each other by the last conversation listed (its `updated_at`, then its id, the
list's order), not by an offset: a conversation that moves to the top meanwhile (a prompt sent in
another tab) or is deleted neither repeats an item nor skips one on the next page.
The list holds the conversations neither pinned, in a folder nor archived; a folder's own list is
paged the same way (`folder`), and the pinned ones are shown whole above (chat/folders.py).
After a send, the page swaps in the list again as its first page (the `conversations` partial):
the pages already scrolled through go, and come back as the reader scrolls down again.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q

from chat.models import MAX_ID, Conversation, ConversationQuerySet, Folder, Someone

PAGE = 50

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A page's place: "<updated_at in microseconds since 1970>-<id>" of the last conversation before it.
_PLACE = re.compile(r"([0-9]{1,17})-([0-9]{1,19})")


class BadPlace(ValueError):
    """A place in the list that the page could not have asked for."""


@dataclass(frozen=True, slots=True)
class Listing:
    conversations: list[Conversation]
    # Where the next page starts, if there may be one.
    next_place: str | None


def place_after(conversation: Conversation) -> str:
    micros = (conversation.updated_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{conversation.pk}"


def parse_place(text: str) -> tuple[datetime, int]:
    found = _PLACE.fullmatch(text)
    if not found or not 1 <= int(found[2]) <= MAX_ID:
        raise BadPlace(text)
    try:
        return _EPOCH + timedelta(microseconds=int(found[1])), int(found[2])
    except OverflowError as exc:  # past year 9999
        raise BadPlace(text) from exc


def _listing(conversations: list[Conversation], size: int) -> Listing:
    # One more than shown is read, to know whether there is a next page.
    shown = conversations[:size]
    return Listing(shown, place_after(shown[-1]) if len(conversations) > size else None)


def _listed(user: Someone, folder: Folder | None) -> ConversationQuerySet:
    if folder is None:
        return Conversation.objects.owned_by(user).unfiled().newest_first()
    return Conversation.objects.owned_by(user).listed().filter(pinned=False, folder=folder).newest_first()


def first_page(user: Someone, *, size: int = PAGE, folder: Folder | None = None) -> Listing:
    return _listing(list(_listed(user, folder)[: size + 1]), size)


async def afirst_page(user: Someone, *, size: int = PAGE) -> Listing:
    read = _listed(user, None)[: size + 1]
    return _listing([conversation async for conversation in read], size)


def page_after(user: Someone, place: str, *, size: int = PAGE, folder: Folder | None = None) -> Listing:
    """The conversations listed after `place` (raises BadPlace)."""
    updated_at, pk = parse_place(place)
    after = Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, pk__lt=pk)
    return _listing(list(_listed(user, folder).filter(after)[: size + 1]), size)
