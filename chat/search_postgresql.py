"""chat.search_postgresql: `_postgresql_message_ids`, search through pg_trgm GIN indexes, by each message's owner.

PostgreSQL: trigram GIN indexes (the pg_trgm extension) on UPPER(content) and UPPER(title) serve
Django's `icontains`, the same match as on SQLite: a part of a word, whatever the case. (Its tsvector
full-text search finds whole words only, and has no Korean dictionary.) A common term is in
thousands of messages: read newest first, the first few the person owns are the answer, and the
trigram index is no help. The planner chooses between the two only as well as it can tell a common
term from a rare one, so it is given a finer sample of the texts (STATISTICS) than the default. And
each message carries its conversation's owner (`conversation_owner_id`, written by a trigger, seen
only by this module), so that reading newest first never joins each row to its conversation, nor
tests the text of another person's rows.
"""

from django.contrib.auth.models import User
from django.db import connection
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from chat.search_query import TRIGRAM, Query, _escape_like


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


POSTGRESQL_INDEXES = {
    "chat_message_content_trgm": ("chat_message", "content"),
    "chat_conversation_title_trgm": ("chat_conversation", "title"),
}


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
