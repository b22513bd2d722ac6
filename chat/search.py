"""chat.search: `search`, a person's conversations by title and messages by text, matched by the database itself.

SQLite (the default) searches two FTS5 trigram indexes (chat/search_sqlite.py), PostgreSQL trigram
GIN indexes (chat/search_postgresql.py), and any other database plain icontains; what a person
typed is parsed, and the matches marked, in chat/search_query.py. Trigrams find any part of a word,
in any script: Korean words carry their particles ("세계를", "세계의").

Every query is limited to the person's own conversations. Results come newest first: in a chat
history the latest mention is usually the one looked for, and it is the order in which the index
can stop after the first few results instead of ranking every match.
"""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db import connection, connections
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import Q

from chat.models import Attachment, Conversation, Message, Someone
from chat.search_postgresql import POSTGRESQL_INDEXES, _postgresql_message_ids
from chat.search_postgresql import add_message_owners as add_message_owners
from chat.search_postgresql import remove_message_owners as remove_message_owners
from chat.search_query import MAX_QUERY_CHARS as MAX_QUERY_CHARS
from chat.search_query import MAX_RESULTS as MAX_RESULTS
from chat.search_query import SNIPPET_CHARS as SNIPPET_CHARS
from chat.search_query import InvalidQuery as InvalidQuery
from chat.search_query import Part as Part
from chat.search_query import Query as Query
from chat.search_query import highlight as highlight
from chat.search_query import snippet as snippet
from chat.search_sqlite import MESSAGES, TITLES, _index_sqlite_table, _sqlite_search, _sqlite_triggers


@dataclass(frozen=True, slots=True)
class ConversationHit:
    conversation_id: int
    title: list[Part]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageHit:
    conversation_id: int
    conversation_title: str
    message_id: int
    role: str
    created_at: datetime
    snippet: list[Part]


@dataclass(frozen=True, slots=True)
class Results:
    query: Query
    conversations: list[ConversationHit]
    messages: list[MessageHit]

    def __bool__(self) -> bool:
        return bool(self.conversations or self.messages)


def search(user: Someone, text: str, *, limit: int = 20, before: int | None = None) -> Results:
    """The user's conversations whose title, and messages whose text, contain every term of `text`.

    Newest first, at most `limit` of each; `before` (a message id) asks for the messages older than
    a page already seen. Conversations match by title only on the first page. Raises InvalidQuery.
    """
    query = Query.parse(text)
    limit = max(1, min(limit, MAX_RESULTS))
    if not query or not user.is_authenticated:
        return Results(query, [], [])
    titles = [] if before else _matching_titles(user, query, limit)
    conversations = [ConversationHit(c.pk, highlight(c.title, query.terms), c.updated_at) for c in titles]
    message_ids = _matching_message_ids(user, query, limit, before)
    found = (
        Message.objects.filter(pk__in=message_ids)
        .select_related("conversation")
        .only("role", "content", "created_at", "conversation__title")
        .order_by("-pk")
    )
    messages = [
        MessageHit(
            conversation_id=m.conversation_id,
            conversation_title=m.conversation.title,
            message_id=m.pk,
            role=m.role,
            created_at=m.created_at,
            snippet=snippet(m.content, query.terms),
        )
        for m in found
    ]
    messages = sorted([*messages, *_matching_files(user, query, limit, before)], key=lambda hit: -hit.message_id)
    return Results(query, conversations, _once_each(messages)[:limit])


def _matching_files(user: User, query: Query, limit: int, before: int | None) -> list[MessageHit]:
    """Prompts whose files' text holds every term: a scan of the person's own files (their text is
    not in the trigram index, whose rows are messages), newest first."""
    files = Attachment.objects.owned_by(user).filter(message__isnull=False).filter(_contains_all("text", query.terms))
    if before:
        files = files.filter(message__lt=before)
    found = files.select_related("message__conversation").order_by("-message", "position")[:limit]
    return [
        MessageHit(
            conversation_id=f.message.conversation_id,
            conversation_title=f.message.conversation.title,
            message_id=f.message.pk,
            role=f.message.role,
            created_at=f.message.created_at,
            snippet=[Part(f"{f.name}: ", False), *snippet(f.text, query.terms)],
        )
        for f in found
        if f.message is not None
    ]


def _once_each(hits: list[MessageHit]) -> list[MessageHit]:
    # A prompt found by its text and by a file's is listed once, by its text (which comes first).
    kept: dict[int, MessageHit] = {}
    for hit in hits:
        kept.setdefault(hit.message_id, hit)
    return list(kept.values())


def _matching_titles(user: User, query: Query, limit: int) -> list[Conversation]:
    owned = Conversation.objects.owned_by(user)
    if connection.vendor == "sqlite":
        ids = _sqlite_search(TITLES, user, query, limit)
        return list(owned.filter(pk__in=ids).only("title", "updated_at").newest_first())
    return list(owned.filter(_contains_all("title", query.terms)).only("title", "updated_at").newest_first()[:limit])


def _matching_message_ids(user: User, query: Query, limit: int, before: int | None) -> list[int]:
    if connection.vendor == "sqlite":
        return _sqlite_search(MESSAGES, user, query, limit, before)
    if connection.vendor == "postgresql":
        return _postgresql_message_ids(user, query, limit, before)
    messages = Message.objects.filter(conversation__owner=user).filter(_contains_all("content", query.terms))
    if before:
        messages = messages.filter(pk__lt=before)
    return list(messages.order_by("-pk").values_list("pk", flat=True)[:limit])


def _contains_all(field: str, terms: tuple[str, ...] | list[str]) -> Q:
    condition = Q()
    for term in terms:
        condition &= Q(**{f"{field}__icontains": term})
    return condition


# --- The index itself: created by migration 0003, repaired after any migration that drops it ------


def create_index(schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Create the search index on the migrated database, and fill it with what is already there."""
    execute = schema_editor.execute
    if schema_editor.connection.vendor == "sqlite":
        for indexed in (MESSAGES, TITLES):
            execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {indexed.index} "
                f"USING fts5({indexed.column}, content='', tokenize='trigram')"
            )
            execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {indexed.vocabulary} USING fts5vocab({indexed.index}, 'row')")
            _index_sqlite_table(execute, indexed)
    elif schema_editor.connection.vendor == "postgresql":
        # Trusted since PostgreSQL 13: the database's owner may create it, no superuser needed.
        execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, (table, column) in POSTGRESQL_INDEXES.items():
            # UPPER(...): the expression Django's icontains compares on PostgreSQL.
            execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin (UPPER({column}) gin_trgm_ops)")
    # Any other database searches with plain icontains.


def index_answers_once_ended(schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Migration 0008: the messages' triggers as `_sqlite_triggers` now writes them, and the index again."""
    if schema_editor.connection.vendor == "sqlite":
        for name in _sqlite_triggers(MESSAGES):
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")
        _index_sqlite_table(schema_editor.execute, MESSAGES)


def drop_index(schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for indexed in (MESSAGES, TITLES):
            for name in _sqlite_triggers(indexed):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")
            schema_editor.execute(f"DROP TABLE IF EXISTS {indexed.vocabulary}")
            schema_editor.execute(f"DROP TABLE IF EXISTS {indexed.index}")
    elif schema_editor.connection.vendor == "postgresql":
        for name in POSTGRESQL_INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def repair_index(using: str) -> list[str]:
    """Recreate the triggers a migration dropped, and index again; returns the tables repaired.

    On SQLite, Django changes a table's columns by copying it into a new table and dropping the old
    one, and SQLite drops a table's triggers with it: after such a migration of chat_message the
    index would silently stop following the messages. Run after every `migrate`.
    """
    database = connections[using]
    if database.vendor != "sqlite":
        return []
    existing = set(database.introspection.table_names())
    with database.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        triggers = {row[0] for row in cursor.fetchall()}
    broken = [i for i in (MESSAGES, TITLES) if i.index in existing and not set(_sqlite_triggers(i)) <= triggers]
    if broken:
        with database.schema_editor() as schema_editor:
            for indexed in broken:
                _index_sqlite_table(schema_editor.execute, indexed)
    return [indexed.table for indexed in broken]
