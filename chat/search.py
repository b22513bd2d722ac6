"""Search through a person's conversations, titles and message text, done by the database itself.

SQLite (the default): two FTS5 tables with the trigram tokenizer index the messages' text and the
conversations' titles. Trigrams find any part of a word, in any script. That matters for Korean: a
word carries its particles ("세계를", "세계의"), so what a person looks for is usually a part of a
word, which FTS5's default tokenizer (whole words between spaces) would never find. Triggers keep
the index in step with every write whichever code made it: a turn's `.filter(pk=...).aupdate(...)`,
an import's `bulk_create`, a conversation's cascading delete. The tables are contentless: the text
stays in chat_message and chat_conversation only.

A term of three characters or more is looked up directly. A shorter one has no trigram of its own,
yet two-syllable Korean words ("세계", "서버") are the most common searches of all: a two-character
term is looked up as every indexed trigram that starts with it (FTS5's vocabulary table lists them),
which finds each occurrence because the index pads every text with two characters at its end. A
one-character term, or a two-character one that starts too many trigrams to list (it is in most
messages), is matched with LIKE on the newest messages first, which then finds enough at once.

PostgreSQL: trigram GIN indexes (the pg_trgm extension) on UPPER(content) and UPPER(title) serve
Django's `icontains`, the same match as on SQLite: a part of a word, whatever the case. (Its tsvector
full-text search finds whole words only, and has no Korean dictionary.) A common term is in
thousands of messages: read newest first, the first few the person owns are the answer, and the
trigram index is no help. The planner chooses between the two only as well as it can tell a common
term from a rare one, so it is given a finer sample of the texts (STATISTICS) than the default. And
each message carries its conversation's owner (`conversation_owner_id`, written by a trigger, seen
only by this module), so that reading newest first never joins each row to its conversation, nor
tests the text of another person's rows.

Every query is limited to the person's own conversations. Results come newest first: in a chat
history the latest mention is usually the one looked for, and it is the order in which the index
can stop after the first few results instead of ranking every match.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.contrib.auth.models import User
from django.db import connection, connections
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import Q
from django.utils.translation import gettext

from chat.models import Conversation, Message, Someone

MAX_QUERY_CHARS = 200
MAX_TERMS = 8
MAX_RESULTS = 50
# The trigram tokenizer indexes runs of three characters: a shorter term is not in the index.
TRIGRAM = 3
SNIPPET_CHARS = 160
SNIPPET_LEAD = 50  # characters shown before the first match


class InvalidQuery(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Query:
    """What the person typed, as the terms every result must contain (a "quoted phrase" is one term)."""

    terms: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Query":
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQuery(gettext("Search for at most %(limit)s characters.") % {"limit": MAX_QUERY_CHARS})
        # NUL cannot be stored or sent to PostgreSQL, and no message holds one.
        text = text.replace("\x00", "")
        terms: list[str] = []
        for phrase, word in re.findall(r'"([^"]*)"|(\S+)', text):
            term = " ".join(phrase.split()) if phrase else word
            if term and term.casefold() not in {t.casefold() for t in terms}:
                terms.append(term)
        if len(terms) > MAX_TERMS:
            raise InvalidQuery(gettext("Search for at most %(limit)s words at once.") % {"limit": MAX_TERMS})
        return cls(tuple(terms))

    def __bool__(self) -> bool:
        return bool(self.terms)

    @property
    def indexed_terms(self) -> list[str]:
        return [term for term in self.terms if len(term) >= TRIGRAM]

    @property
    def short_terms(self) -> list[str]:
        return [term for term in self.terms if len(term) < TRIGRAM]


class Part(NamedTuple):
    """A piece of a title or snippet, and whether it is what was searched for.

    Text comes out as parts, never as markup: the page escapes each one and marks the matches, so a
    message that holds HTML is shown as text.
    """

    text: str
    match: bool


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
    return Results(query, conversations, messages)


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


def _postgresql_message_ids(user: User, query: Query, limit: int, before: int | None) -> list[int]:
    """The user's messages that hold every term, newest first, by their owner carried on each row.

    The condition on the text is Django's `icontains` written out, UPPER(...) LIKE UPPER(...), the
    expression the trigram index is built on: the planner then chooses between reading newest first
    and stopping at `limit`, and asking the index for a rare term's few messages.

    A phrase is asked of the index as its words, and then as itself with strpos(), which no index
    serves: the index can only tell which messages hold every word, and those are the messages it
    would hand over to be read. Asked for the phrase itself, the planner would expect as few of them
    as there are messages with the phrase ("stream browser": 2,000, where 60,000 hold both words).
    """
    sql = [f"SELECT id FROM chat_message WHERE {OWNER_COLUMN} = %s"]
    params: list[str | int] = [user.pk]
    for term in query.terms:
        words = term.split(" ")  # Query.parse leaves one space between a phrase's words
        if len(words) == 1:
            sql.append("AND UPPER(content) LIKE UPPER(%s)")
            params.append(f"%{_escape_like(term)}%")
            continue
        for word in words:
            if len(word) >= TRIGRAM:
                sql.append("AND UPPER(content) LIKE UPPER(%s)")
                params.append(f"%{_escape_like(word)}%")
        sql.append("AND strpos(UPPER(content), UPPER(%s)) > 0")
        params.append(term)
    if before:
        sql.append("AND id < %s")
        params.append(before)
    sql.append("ORDER BY id DESC LIMIT %s")
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute("\n".join(sql), params)
        return [row[0] for row in cursor.fetchall()]


def _contains_all(field: str, terms: tuple[str, ...] | list[str]) -> Q:
    condition = Q()
    for term in terms:
        condition &= Q(**{f"{field}__icontains": term})
    return condition


@dataclass(frozen=True, slots=True)
class Indexed:
    """A text column with its FTS5 index, and how its rows reach their conversation's owner."""

    table: str
    column: str
    index: str
    conversation: str  # the SQL of a row's conversation id, the row being `r`
    # Which rows are indexed, as SQL about the row `{row}`; every row when empty.
    indexed_when: str = ""

    def indexed(self, row: str) -> str:
        return f" WHERE {self.indexed_when.format(row=row)}" if self.indexed_when else ""

    @property
    def vocabulary(self) -> str:
        return f"{self.index}_terms"


# An answer is indexed once it has ended, not while it streams: each checkpoint rewrites its whole
# text, and indexing it again each time made a long answer's checkpoints cost more and more (every
# character is a trigram), the most CPU of anything at a hundred streams (bench/README.md).
MESSAGES = Indexed("chat_message", "content", "chat_message_search", "r.conversation_id", "{row}.status != 'streaming'")
TITLES = Indexed("chat_conversation", "title", "chat_conversation_search", "r.id")
# Two characters that end every indexed text, so that each character of it starts a trigram.
PADDING = "char(10, 10)"
# A two-character term that starts more trigrams than this is in most texts: LIKE finds it sooner.
MAX_CONTINUATIONS = 200


def _sqlite_search(indexed: Indexed, user: User, query: Query, limit: int, before: int | None = None) -> list[int]:
    """Row ids of `indexed.table` that are the user's and hold every term, newest first.

    CROSS JOIN fixes the order in which SQLite's planner reads the tables: from the index's matches
    (or the table's rows) newest first, keeping the user's, stopping at `limit`. Left to itself it
    would start from all of the user's rows, test each one and sort them all.
    """
    phrases = [_phrase(term) for term in query.indexed_terms]
    scanned: list[str] = []
    for term in query.short_terms:
        continuations = _continuations(indexed, term) if len(term) == 2 else None
        if continuations is None:
            scanned.append(term)
        elif not continuations:
            return []  # no text holds the term at all
        else:
            phrases.append("(" + " OR ".join(map(_phrase, continuations)) + ")")
    params: list[str | int | None] = []
    if phrases:
        key = "s.rowid"  # the order the index yields its matches in, and can start from
        sql = [
            f"SELECT r.id FROM {indexed.index} AS s",
            f"CROSS JOIN {indexed.table} AS r ON r.id = s.rowid",
            f"CROSS JOIN chat_conversation AS c ON c.id = {indexed.conversation}",
            f"WHERE {indexed.index} MATCH %s AND c.owner_id = %s",
        ]
        params += [" AND ".join(phrases), user.pk]
    else:
        key = "r.id"
        sql = [
            f"SELECT r.id FROM {indexed.table} AS r",
            f"CROSS JOIN chat_conversation AS c ON c.id = {indexed.conversation}",
            "WHERE c.owner_id = %s",
        ]
        params.append(user.pk)
    for term in scanned:
        sql.append(f"AND r.{indexed.column} LIKE %s ESCAPE '\\'")
        params.append(f"%{_escape_like(term)}%")
    if before:
        sql.append(f"AND {key} < %s")
        params.append(before)
    sql.append(f"ORDER BY {key} DESC LIMIT %s")
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute("\n".join(sql), params)
        return [row[0] for row in cursor.fetchall()]


def _continuations(indexed: Indexed, term: str) -> list[str] | None:
    """The indexed trigrams that start with `term` (as the index folds case), or None if too many."""
    folded = term.lower()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT term FROM {indexed.vocabulary} WHERE term >= %s AND term < %s LIMIT %s",
            [folded, folded + "\U0010ffff", MAX_CONTINUATIONS + 1],
        )
        found = [row[0] for row in cursor.fetchall()]
    return None if len(found) > MAX_CONTINUATIONS else found


def _phrase(term: str) -> str:
    # One quoted FTS5 phrase (a quote inside doubled): no input is ever read as query syntax.
    return '"{}"'.format(term.replace('"', '""'))


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- Titles and snippets with the matches marked --------------------------------------------------


def _pattern(terms: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    # Longest first, so that of two overlapping terms the longer is marked whole.
    return re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)


def highlight(text: str, terms: tuple[str, ...] | list[str]) -> list[Part]:
    """All of `text`, in parts, each occurrence of a term marked."""
    parts: list[Part] = []
    end = 0
    for found in _pattern(terms).finditer(text):
        if found.start() > end:
            parts.append(Part(text[end : found.start()], False))
        parts.append(Part(found.group(), True))
        end = found.end()
    if end < len(text):
        parts.append(Part(text[end:], False))
    return parts


def snippet(text: str, terms: tuple[str, ...] | list[str], width: int = SNIPPET_CHARS) -> list[Part]:
    """A line of `text` around its first match, with the matches marked and the cuts shown as "…"."""
    first = _pattern(terms).search(text)
    start = max(0, first.start() - SNIPPET_LEAD) if first else 0
    if start:
        # Begin at a word when there is one close by, rather than in the middle of one.
        space = text.find(" ", start, first.start() if first else start)
        start = space + 1 if space != -1 else start
    end = max(start + width, first.end() if first else 0)
    parts = highlight(text[start:end], terms)
    # One line: the snippet sits in a list of results.
    parts = [Part(re.sub(r"\s+", " ", part.text), part.match) for part in parts]
    if start:
        parts.insert(0, Part("…", False))
    if end < len(text):
        parts.append(Part("…", False))
    return parts


# --- The index itself: created by migration 0003, repaired after any migration that drops it ------


def _sqlite_triggers(indexed: Indexed) -> dict[str, str]:
    index, table, column = indexed.index, indexed.table, indexed.column
    # A contentless table is told what to forget with the values it indexed: the 'delete' command.
    # Both only for the rows that are indexed (`indexed_when`), or the index would be told to forget
    # what it never learnt.
    forget = (
        f"INSERT INTO {index}({index}, rowid, {column}) "
        f"SELECT 'delete', old.id, old.{column} || {PADDING}{indexed.indexed('old')};"
    )
    learn = f"INSERT INTO {index}(rowid, {column}) SELECT new.id, new.{column} || {PADDING}{indexed.indexed('new')};"
    # Only when the text changed, or whether the row is indexed did: a conversation's save(), and a
    # turn's status updates until its end, leave it be.
    changed = f"old.{column} IS NOT new.{column}"
    columns = column
    if indexed.indexed_when:
        was, now = (f"({indexed.indexed_when.format(row=row)})" for row in ("old", "new"))
        changed += f" OR {was} IS NOT {now}"
        columns += ", status"
    return {
        f"{index}_insert": f"AFTER INSERT ON {table} BEGIN {learn} END",
        f"{index}_delete": f"AFTER DELETE ON {table} BEGIN {forget} END",
        f"{index}_update": f"AFTER UPDATE OF {columns} ON {table} WHEN {changed} BEGIN {forget} {learn} END",
    }


POSTGRESQL_INDEXES = {
    "chat_message_content_trgm": ("chat_message", "content"),
    "chat_conversation_title_trgm": ("chat_conversation", "title"),
}


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


def _index_sqlite_table(execute: Callable[[str], None], indexed: Indexed) -> None:
    for name, body in _sqlite_triggers(indexed).items():
        execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
    # Index the whole table again: what was written while the triggers were missing is found too.
    execute(f"INSERT INTO {indexed.index}({indexed.index}) VALUES ('delete-all')")
    execute(
        f"INSERT INTO {indexed.index}(rowid, {indexed.column}) "
        f"SELECT id, {indexed.column} || {PADDING} FROM {indexed.table} AS r{indexed.indexed('r')}"
    )


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


# --- Each message's owner on PostgreSQL: created by migration 0007 -------------------------------

OWNER_COLUMN = "conversation_owner_id"
# The histogram the planner matches a LIKE pattern against: at the default 100 texts, a term in one
# message of a hundred is often in none of them, taken for rare and looked up in the trigram index,
# all of whose many candidates are then read (a phrase of two common words: 60,000 of them).
TEXT_STATISTICS = 1000


def add_message_owners(schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Give each message its conversation's owner, kept by triggers: a message written by any code
    (a turn, an import's bulk_create, a branch) gets it, and follows its conversation to a new owner."""
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite's search starts from its FTS5 index and joins only the rows it finds
    execute = schema_editor.execute
    execute(f"ALTER TABLE chat_message ADD COLUMN IF NOT EXISTS {OWNER_COLUMN} integer")
    execute(
        f"UPDATE chat_message AS m SET {OWNER_COLUMN} = c.owner_id "
        "FROM chat_conversation AS c WHERE c.id = m.conversation_id"
    )
    execute(
        "CREATE OR REPLACE FUNCTION chat_message_owner() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"NEW.{OWNER_COLUMN} := (SELECT owner_id FROM chat_conversation WHERE id = NEW.conversation_id); "
        "RETURN NEW; END $$"
    )
    execute("DROP TRIGGER IF EXISTS chat_message_owner ON chat_message")
    execute(
        "CREATE TRIGGER chat_message_owner BEFORE INSERT OR UPDATE OF conversation_id "
        "ON chat_message FOR EACH ROW EXECUTE FUNCTION chat_message_owner()"
    )
    execute(
        "CREATE OR REPLACE FUNCTION chat_conversation_owner() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"UPDATE chat_message SET {OWNER_COLUMN} = NEW.owner_id WHERE conversation_id = NEW.id; "
        "RETURN NULL; END $$"
    )
    # Every save() of a conversation sets owner_id: the WHEN keeps its messages untouched.
    execute("DROP TRIGGER IF EXISTS chat_conversation_owner ON chat_conversation")
    execute(
        "CREATE TRIGGER chat_conversation_owner AFTER UPDATE OF owner_id ON chat_conversation "
        "FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id) EXECUTE FUNCTION chat_conversation_owner()"
    )
    execute(f"CREATE INDEX IF NOT EXISTS chat_message_owner_newest ON chat_message ({OWNER_COLUMN}, id)")
    execute(f"ALTER INDEX chat_message_content_trgm ALTER COLUMN 1 SET STATISTICS {TEXT_STATISTICS}")
    execute("ANALYZE chat_message")


def remove_message_owners(schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    execute = schema_editor.execute
    execute("ALTER INDEX chat_message_content_trgm ALTER COLUMN 1 SET STATISTICS -1")
    execute("DROP TRIGGER IF EXISTS chat_conversation_owner ON chat_conversation")
    execute("DROP FUNCTION IF EXISTS chat_conversation_owner()")
    execute("DROP TRIGGER IF EXISTS chat_message_owner ON chat_message")
    execute("DROP FUNCTION IF EXISTS chat_message_owner()")
    execute(f"ALTER TABLE chat_message DROP COLUMN IF EXISTS {OWNER_COLUMN}")  # and its index


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
