"""A conversation's messages as a tree, and the one branch of it that is shown.

Every message but a conversation's first prompt has a parent: an answer's is the prompt it answers,
a prompt's is the answer it follows. Regenerating adds an answer beside the old one, editing a
prompt adds a prompt beside it: siblings, shown as versions ("2 / 3"). Nothing is rewritten.

The conversation records the last message of the branch shown (`Conversation.branch_tip`); the
branch is the path from the first prompt down to it. So showing another version, regenerating or
editing writes the new messages and that one field, whatever the conversation's size; and the page,
another tab, the API and the model's history all read the same branch.

A reply is always saved after its parent, so it has a larger id: a branch in id order is a branch
from its first prompt down. A branch's messages are read in one query (a recursive one, which
SQLite and PostgreSQL both run) for the model's history, the API and the exports. The versions need
the tree's shape (ids and parents), read in one more.

The page shows a long branch a page at a time (`shown_page`, `page_before`): the branch is found
in the tree's shape, which is read anyway, and only the messages on the page are read and rendered,
so that opening a conversation of a thousand messages costs about what opening one of thirty does.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db.models.expressions import RawSQL

from chat.models import Conversation, Message, MessageQuerySet

# The ids of a message and of every message above it.
_MESSAGES = Message._meta.db_table
_PATH_TO = (
    "WITH RECURSIVE path(id, parent_id) AS ("
    f" SELECT id, parent_id FROM {_MESSAGES} WHERE id = %s"
    f" UNION ALL SELECT m.id, m.parent_id FROM {_MESSAGES} m JOIN path ON m.id = path.parent_id"
    ") SELECT id FROM path"
)


def branch_to[Q: MessageQuerySet](tip: int | None, messages: Q) -> Q:
    """Those of `messages` on the branch that ends at `tip`, from the first prompt down."""
    return messages.filter(pk__in=RawSQL(_PATH_TO, [tip])).order_by("pk")


@dataclass(frozen=True, slots=True)
class Versions:
    """A message and its siblings (the messages with the same parent), oldest first."""

    ids: tuple[int, ...]
    current: int

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def position(self) -> int:
        """1 for the oldest version."""
        return self.ids.index(self.current) + 1

    @property
    def previous(self) -> int | None:
        index = self.ids.index(self.current)
        return self.ids[index - 1] if index > 0 else None

    @property
    def next(self) -> int | None:
        index = self.ids.index(self.current)
        return self.ids[index + 1] if index + 1 < len(self.ids) else None


# A branch as the page shows it: each message with its versions.
type Branch = list[tuple[Message, Versions]]


class Tree:
    """The shape of a conversation's messages: each one's parent and replies, by id."""

    def __init__(self, links: Iterable[tuple[int, int | None]]) -> None:
        self.parents: dict[int, int | None] = {}
        self.replies: defaultdict[int | None, list[int]] = defaultdict(list)
        for pk, parent in sorted(links):  # by id: each message's replies oldest first
            self.parents[pk] = parent
            self.replies[parent].append(pk)

    @classmethod
    def of(cls, conversation_pk: int) -> "Tree":
        return cls(Message.objects.filter(conversation=conversation_pk).values_list("pk", "parent"))

    @classmethod
    async def aof(cls, conversation_pk: int) -> "Tree":
        links = Message.objects.filter(conversation=conversation_pk).values_list("pk", "parent")
        return cls([link async for link in links])

    def __contains__(self, pk: object) -> bool:
        return pk in self.parents

    def versions_of(self, pk: int) -> Versions:
        return Versions(tuple(self.replies[self.parents[pk]]), pk)

    def newest_tip_under(self, pk: int) -> int:
        """The newest message at the end of a branch through `pk`: where showing `pk` leads."""
        ends: list[int] = []
        waiting = [pk]
        while waiting:
            here = waiting.pop()
            if here in self.replies:
                waiting.extend(self.replies[here])
            else:
                ends.append(here)
        return max(ends)

    def leads_to(self, pk: int, tip: int | None) -> bool:
        """Whether `pk` is on the branch that ends at `tip`."""
        while tip is not None:
            if tip == pk:
                return True
            tip = self.parents[tip]
        return False

    def path_to(self, tip: int | None) -> list[int]:
        """The ids on the branch that ends at `tip`, from the first prompt down."""
        path = []
        while tip is not None:
            path.append(tip)
            tip = self.parents[tip]
        return path[::-1]

    def tip(self, recorded: int | None) -> int | None:
        """The recorded tip; for a conversation that has none (yet), its newest message's branch."""
        if recorded in self.parents:
            return recorded
        return max(self.parents, default=None)


def shown_branch(conversation: Conversation, *, through: int | None = None) -> Branch:
    """The branch the conversation shows, from its first prompt to its tip.

    With `through` (a message a search found, say), the branch through that message if the one
    shown does not hold it: the newest below it, as showing it would lead to, but only to read;
    nothing is stored until the person sends, regenerates, edits or steps to another version.
    """
    tree = Tree.of(conversation.pk)
    tip = tree.tip(conversation.branch_tip_id)
    if through is not None and through in tree and not tree.leads_to(through, tip):
        tip = tree.newest_tip_under(through)
    messages = branch_to(tip, Message.objects.prefetch_related("attachments"))
    return [(message, tree.versions_of(message.pk)) for message in messages]


ashown_branch = sync_to_async(shown_branch)

# How many messages of a branch the page renders at a time: a screen or two of them. The reader
# scrolling up asks for the ones before (`page_before`).
PAGE = 30


@dataclass(frozen=True, slots=True)
class Page:
    """Part of a branch as the page shows it, and, if the branch goes on above it, its first
    message: the page before this one ends just above it."""

    messages: Branch
    earlier: int | None


def _page(tree: Tree, path: list[int], start: int) -> Page:
    # The branch's shape is already read; only the messages shown are, whatever the branch's length.
    # With the thumbs under each answer (chat/feedback.py) and each prompt's files (chat/attachments.py),
    # one more query each whatever the page's length.
    messages = Message.objects.filter(pk__in=path[start:]).order_by("pk").prefetch_related("feedback", "attachments")
    return Page([(message, tree.versions_of(message.pk)) for message in messages], path[start] if start > 0 else None)


def shown_page(conversation: Conversation, *, through: int | None = None, size: int = PAGE) -> Page:
    """The end of the branch the conversation shows (see `shown_branch`): its newest `size`
    messages, or, with `through` further up, from that message down, so that it is on the page."""
    tree = Tree.of(conversation.pk)
    tip = tree.tip(conversation.branch_tip_id)
    if through is not None and through in tree and not tree.leads_to(through, tip):
        tip = tree.newest_tip_under(through)
    path = tree.path_to(tip)
    start = max(len(path) - size, 0)
    if through in path:
        start = min(start, path.index(through))
    return _page(tree, path, start)


ashown_page = sync_to_async(shown_page)


def page_before(conversation_pk: int, before: int, *, size: int = PAGE) -> Page | None:
    """The `size` messages above `before` on its branch, or None if `before` is not one of the
    conversation's messages. A message has one parent, so the messages above it are the same
    whichever branch below it is shown: no tip needed, and a page asked for before another tab
    switched the branch still joins the one on screen."""
    tree = Tree.of(conversation_pk)
    if before not in tree:
        return None
    path = tree.path_to(tree.parents[before])
    return _page(tree, path, max(len(path) - size, 0))


async def turn_with_versions(conversation: Conversation, messages: Iterable[Message]) -> Branch:
    """A turn just started (its prompt and answer), each with its versions."""
    tree = await Tree.aof(conversation.pk)
    return [(message, tree.versions_of(message.pk)) for message in messages]


async def show(message: Message) -> None:
    """Show the branch through this version of a message: from now on the page, the API and the
    next prompt continue from the newest message below it. Writes one row."""
    tree = await Tree.aof(message.conversation_id)
    tip = tree.newest_tip_under(message.pk)
    # Not `save()`: a switch is not activity that moves the conversation up the list.
    await Conversation.objects.filter(pk=message.conversation_id).aupdate(branch_tip=tip)
