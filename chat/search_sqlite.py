"""chat.search_sqlite: `_sqlite_search`, the SQLite FTS5 trigram index of messages and titles, newest first.

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
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import connection

from chat.search_query import Query, _escape_like


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


def _index_sqlite_table(execute: Callable[[str], None], indexed: Indexed) -> None:
    for name, body in _sqlite_triggers(indexed).items():
        execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
    # Index the whole table again: what was written while the triggers were missing is found too.
    execute(f"INSERT INTO {indexed.index}({indexed.index}) VALUES ('delete-all')")
    execute(
        f"INSERT INTO {indexed.index}(rowid, {indexed.column}) "
        f"SELECT id, {indexed.column} || {PADDING} FROM {indexed.table} AS r{indexed.indexed('r')}"
    )
