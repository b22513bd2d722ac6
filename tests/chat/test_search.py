"""Search: what it finds (Korean too, by any part of a word), whose, kept in step with every write,
and shown safely. These tests also run on PostgreSQL (tests/chat/test_postgresql.py)."""

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chat import search
from chat.models import Attachment, Conversation, Message
from chat.search import Part, Query

pytestmark = pytest.mark.django_db
sqlite_only = pytest.mark.skipif("connection.vendor != 'sqlite'", reason="SQLite's FTS5 index")


def say(conversation: Conversation, content: str, role: str = "user") -> Message:
    return Message.objects.create(conversation=conversation, role=role, content=content)


def found(user, text: str, **options) -> list[int]:
    """The ids of the messages a search finds, newest first."""
    return [hit.message_id for hit in search.search(user, text, **options).messages]


def titles(user, text: str) -> list[int]:
    return [hit.conversation_id for hit in search.search(user, text).conversations]


@pytest.fixture
def chat(alice):
    return Conversation.objects.create(owner=alice, title="Travel plans")


def test_finds_a_message_by_a_word_in_any_case(alice, chat):
    message = say(chat, "I would like to visit Lisbon in the spring.")
    say(chat, "Something else entirely.")
    assert found(alice, "lisbon") == [message.pk]
    assert found(alice, "LISBON") == [message.pk]
    assert found(alice, "madrid") == []


def test_finds_a_part_of_a_word(alice, chat):
    message = say(chat, "Kubernetes deployments keep failing")
    assert found(alice, "bernet") == [message.pk]
    assert found(alice, "deploy") == [message.pk]


def test_finds_korean_by_any_part_of_a_word(alice, chat):
    # Korean attaches particles to words: "세계를" is "세계" (world) + "를". A search for the
    # noun must find it inside the word, and so must a search for a part of a compound word.
    message = say(chat, "전세계를 여행하고 싶어요. 데이터베이스 서버가 느려요.")
    say(chat, "오늘 날씨가 좋네요.")
    assert found(alice, "세계를") == [message.pk]  # three syllables: in the trigram index
    assert found(alice, "여행하고") == [message.pk]
    assert found(alice, "베이스") == [message.pk]  # the end of a compound word
    assert found(alice, "세계") == [message.pk]  # two syllables: the most common Korean search
    assert found(alice, "서버") == [message.pk]
    assert found(alice, "요") != []  # one syllable
    assert found(alice, "우주") == []


def test_finds_a_two_character_word_at_the_very_end_of_a_message(alice, chat):
    # No trigram starts with the last two characters of a text, but for the index's padding.
    message = say(chat, "가고 싶은 곳은 세계")
    lone = say(chat, "여행")
    assert found(alice, "세계") == [message.pk]
    assert found(alice, "여행") == [lone.pk]
    assert found(alice, "행") == [lone.pk]


def test_every_word_must_be_in_the_message(alice, chat):
    both = say(chat, "The database server is slow today")
    say(chat, "The database is fine")
    assert found(alice, "database slow") == [both.pk]
    assert found(alice, "server 서버") == []
    korean = say(chat, "웹 서버 python 배포")
    assert found(alice, "python 서버") == [korean.pk]
    assert found(alice, "웹 python") == [korean.pk]  # a one-character word with a longer one


def test_a_quoted_phrase_is_one_term(alice, chat):
    phrase = say(chat, "the quick brown fox")
    words = say(chat, "brown and quick")
    assert found(alice, '"quick brown"') == [phrase.pk]
    assert found(alice, "quick brown") == [words.pk, phrase.pk]
    # Whatever the case, with words of any length, in any script, its wildcards literal.
    korean = say(chat, "We go to the Big Apple: 세계 여행 100% sure")
    assert found(alice, '"TO THE big"') == [korean.pk]
    assert found(alice, '"the to"') == []
    assert found(alice, '"세계 여"') == [korean.pk]
    assert found(alice, '"계 여행 1"') == [korean.pk]
    assert found(alice, '"100% sure"') == [korean.pk]
    assert found(alice, '"100_ sure"') == [] and found(alice, '"10% sure"') == []
    assert found(alice, '"brown fox" "the quick"') == [phrase.pk]


def test_finds_conversations_by_title(alice, chat):
    other = Conversation.objects.create(owner=alice, title="세계 여행 계획")
    Conversation.objects.create(owner=alice, title="Groceries")
    assert titles(alice, "travel") == [chat.pk]
    assert titles(alice, "여행") == [other.pk]
    assert titles(alice, "세계 여행 계획") == [other.pk]
    assert titles(alice, "계획") == [other.pk]


def test_only_the_persons_own_conversations(alice, bob, chat):
    say(chat, "alice's secret: the password is swordfish")
    bobs = Conversation.objects.create(owner=bob, title="swordfish notes")
    say(bobs, "bob's swordfish recipe")
    say(bobs, "세계 여행")
    assert len(found(alice, "swordfish")) == 1
    assert titles(alice, "swordfish") == []
    assert found(bob, "secret") == []
    assert found(bob, "password is") == []
    assert found(alice, "세계") == []
    assert found(alice, "bob") == [] and found(alice, "b") == []


def test_a_message_is_found_by_whoever_owns_its_conversation_now(alice, bob, chat):
    # PostgreSQL's search reads the owner each message carries (chat/search.py): it must follow.
    message = say(chat, "notes on the glacier trip")
    chat.owner = bob
    chat.save()
    assert found(alice, "glacier") == [] and found(alice, "gl") == []
    assert found(bob, "glacier") == [message.pk] and found(bob, "gl") == [message.pk]
    alices = Conversation.objects.create(owner=alice, title="Mine again")
    Message.objects.filter(pk=message.pk).update(conversation=alices)
    assert found(alice, "glacier") == [message.pk]
    assert found(bob, "glacier") == []


def test_newest_first_a_page_at_a_time(alice, chat):
    messages = [say(chat, f"note number {n} about kiwis") for n in range(5)]
    newest_first = [m.pk for m in reversed(messages)]
    assert found(alice, "kiwi", limit=2) == newest_first[:2]
    assert found(alice, "kiwi", limit=2, before=newest_first[1]) == newest_first[2:4]
    assert found(alice, "ki", limit=2, before=newest_first[1]) == newest_first[2:4]


def test_the_index_follows_every_write(alice, chat):
    message = say(chat, "first draft about penguins")
    assert found(alice, "penguin") == [message.pk]
    # As a turn writes an answer: an update that bypasses save().
    Message.objects.filter(pk=message.pk).update(content="second draft about walruses")
    assert found(alice, "penguin") == []
    assert found(alice, "walrus") == [message.pk]
    # Written in bulk, as an import writes.
    bulk = Message.objects.bulk_create([Message(conversation=chat, role="user", content="펭귄과 바다코끼리")])
    assert found(alice, "바다코끼리") == [bulk[0].pk]
    message.delete()
    assert found(alice, "walrus") == []
    chat.title = "Arctic animals"
    chat.save()
    assert titles(alice, "arctic") == [chat.pk]
    assert titles(alice, "travel") == []
    chat.delete()  # its messages go with it
    assert found(alice, "바다코끼리") == []
    assert titles(alice, "arctic") == []


@pytest.mark.django_db(transaction=True)  # the async ORM calls run on a connection of their own
async def test_the_index_follows_a_turns_async_writes(alice, chat):
    # chat/turn_storage.py checkpoints and finishes an answer with `.filter(pk=...).aupdate(...)`.
    answer = await Message.objects.acreate(conversation=chat, role="assistant", content="", status="streaming")
    await Message.objects.filter(pk=answer.pk).aupdate(content="Halfway through the fjords")
    await Message.objects.filter(pk=answer.pk).aupdate(
        content="Halfway through the fjords of Norway", status="complete"
    )
    hits = await sync_to_async(search.search)(alice, "fjords norway")
    assert [hit.message_id for hit in hits.messages] == [answer.pk]


def _indexed_trigrams(term: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM chat_message_search_terms WHERE term = %s", [term])
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's FTS5 index")
@pytest.mark.django_db(transaction=True)
async def test_an_answer_is_indexed_once_it_has_ended_not_at_each_checkpoint(alice, chat):
    # Each checkpoint rewrites the whole text: indexing it each time cost ever more as the answer
    # grew, the most CPU of anything at a hundred streams (bench/README.md).
    answer = await Message.objects.acreate(conversation=chat, role="assistant", content="", status="streaming")
    await Message.objects.filter(pk=answer.pk).aupdate(content="Halfway through the fjords")
    assert await sync_to_async(_indexed_trigrams)("fjo") == 0
    # Stopped (or interrupted): only the status changes, and the text is indexed then.
    await Message.objects.filter(pk=answer.pk).aupdate(status="stopped")
    assert await sync_to_async(_indexed_trigrams)("fjo") == 1
    hits = await sync_to_async(search.search)(alice, "fjords")
    assert [hit.message_id for hit in hits.messages] == [answer.pk]
    # A streaming answer deleted leaves the index as it was: it is told to forget only what it learnt.
    streaming = await Message.objects.acreate(conversation=chat, role="assistant", content="fjords", status="streaming")
    await streaming.adelete()
    await answer.adelete()
    assert await sync_to_async(_indexed_trigrams)("fjo") == 0


@pytest.mark.parametrize(
    "text",
    [
        '"',
        '""',
        "'",
        "*",
        "AND",
        "OR NOT",
        "NEAR(a b)",
        "(",
        ")",
        "a:b",
        "title:x",
        "^",
        "%",
        "_",
        "\\",
        "100%",
        "\x00",
        "\x00abc",
        "세계\x00",
        "a" * 200,
        '"unterminated phrase',
        "-",
        "+",
        "{}",
        "col:",
        "...",
    ],
)
def test_any_text_is_a_search_never_an_error(alice, chat, text):
    say(chat, "plain text with 100% cotton and a_b")
    search.search(alice, text)  # FTS5 query syntax and LIKE's wildcards are never interpreted


def test_like_wildcards_are_literal(alice, chat):
    percent = say(chat, "100% cotton")
    say(chat, "1000 cottons")
    underscore = say(chat, "snake_case")
    say(chat, "snakeXcase")
    assert found(alice, "0%") == [percent.pk]
    assert found(alice, "100%") == [percent.pk]
    assert found(alice, "e_c") == [underscore.pk]
    assert found(alice, "_") == [underscore.pk]


def test_too_long_a_search_is_refused_with_a_reason(alice):
    with pytest.raises(search.InvalidQuery, match="at most 200 characters"):
        search.search(alice, "x" * 201)
    with pytest.raises(search.InvalidQuery, match="at most 8 words"):
        search.search(alice, " ".join(f"w{n}" for n in range(9)))


def test_query_terms():
    assert Query.parse('  Hello  "big   world" hello 세계  ').terms == ("Hello", "big world", "세계")
    assert not Query.parse("   ")
    assert Query.parse("a\x00b").terms == ("ab",)


def test_snippet_marks_every_match_around_the_first():
    text = "Intro. " * 20 + "Here the Needle is, and another needle." + " Outro." * 30
    parts = search.snippet(text, ["needle"])
    assert parts[0] == Part("…", False) and parts[-1] == Part("…", False)
    assert [p.text for p in parts if p.match] == ["Needle", "needle"]
    assert len("".join(p.text for p in parts)) <= search.SNIPPET_CHARS + 2
    assert search.snippet("short\n\ntext with a\tword", ["word"]) == [
        Part("short text with a ", False),
        Part("word", True),
    ]


def test_highlight_prefers_the_longer_of_overlapping_terms():
    assert search.highlight("데이터베이스", ["데이터", "데이터베이스"]) == [Part("데이터베이스", True)]


# --- The page -----------------------------------------------------------------------------------


def test_the_search_box_gets_results_as_a_partial_with_links_to_the_message(client: Client, alice, chat):
    message = say(chat, "전세계를 여행하고 싶어요")
    client.force_login(alice)
    response = client.get(reverse("chat:search"), {"q": "세계"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html  # only the results, for the sidebar
    assert f'href="/c/{chat.pk}/?message={message.pk}#message-{message.pk}"' in html
    assert "전<mark>세계</mark>를 여행하고 싶어요" in html


def test_the_search_page_without_htmx_is_a_whole_page(client: Client, alice, chat):
    say(chat, "find me")
    client.force_login(alice)
    response = client.get(reverse("chat:search"), {"q": "find"})
    assert response.status_code == 200
    assert b"<html" in response.content and b"<mark>find</mark>" in response.content


def test_stored_text_is_shown_as_text_never_as_html(client: Client, alice):
    chat = Conversation.objects.create(owner=alice, title="<img src=x onerror=alert(1)> 제목")
    say(chat, "<script>alert('x')</script> 찾기 <b>bold</b> & more")
    client.force_login(alice)
    html = client.get(reverse("chat:search"), {"q": "찾기"}, headers={"HX-Request": "true"}).content.decode()
    assert "<script>" not in html and "<b>" not in html and "<img" not in html
    assert (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; <mark>찾기</mark> &lt;b&gt;bold&lt;/b&gt; &amp; more" in html
    )
    html = client.get(reverse("chat:search"), {"q": "<script>"}, headers={"HX-Request": "true"}).content.decode()
    assert "<mark>&lt;script&gt;</mark>" in html


def test_the_page_says_when_nothing_is_found_and_when_the_search_is_refused(client: Client, alice):
    client.force_login(alice)
    response = client.get(reverse("chat:search"), {"q": "nowhere"}, headers={"HX-Request": "true"})
    assert "Nothing found for “nowhere”" in response.content.decode()
    response = client.get(reverse("chat:search"), {"q": "x" * 300}, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert "at most 200 characters" in response.content.decode()
    empty = client.get(reverse("chat:search"), {"q": ""}, headers={"HX-Request": "true"})
    assert empty.status_code == 200 and b"<li" not in empty.content  # the conversation list shows again


def test_the_search_page_needs_a_signed_in_person(client: Client):
    response = client.get(reverse("chat:search"), {"q": "x"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_the_search_page_shows_only_the_persons_own(client: Client, alice, bob):
    say(Conversation.objects.create(owner=alice, title="mine"), "alice's diary entry")
    client.force_login(bob)
    html = client.get(reverse("chat:search"), {"q": "diary"}, headers={"HX-Request": "true"}).content.decode()
    assert "diary entry" not in html and "Nothing found" in html


# --- The index itself ---------------------------------------------------------------------------


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_migration_that_rebuilds_the_messages_table_does_not_leave_the_index_behind(alice):
    """Django's SQLite schema editor changes a table by copying it and dropping the old one, and
    SQLite drops the old table's triggers with it. After `migrate`, the index is whole again."""
    chat = Conversation.objects.create(owner=alice, title="Before")
    say(chat, "written before the migration")
    with connection.schema_editor() as editor:
        # What AlterField, RemoveField... do on SQLite; private to its editor, so not in django-stubs.
        editor._remake_table(Message)  # type: ignore[attr-defined]
    during = say(chat, "written while the triggers were missing")
    assert found(alice, "missing") == []  # the defect: the index no longer follows

    assert search.repair_index("default") == ["chat_message"]  # what runs after every migrate
    assert found(alice, "missing") == [during.pk]
    assert len(found(alice, "written")) == 2
    after = say(chat, "written after the repair")
    assert found(alice, "after the repair") == [after.pk]
    assert search.repair_index("default") == []  # nothing to do when the triggers are there


@sqlite_only
def test_the_index_is_the_trigram_fts5_index(alice, chat):
    say(chat, "indexed")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'chat_message_search'")
        assert "tokenize='trigram'" in cursor.fetchone()[0]
        cursor.execute("EXPLAIN QUERY PLAN SELECT rowid FROM chat_message_search WHERE chat_message_search MATCH 'dex'")
        assert "VIRTUAL TABLE INDEX" in str(cursor.fetchall())


def test_postgresql_serves_the_search_from_its_trigram_index(alice, chat):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's pg_trgm index")
    say(chat, "전세계를 여행하고 싶어요, with a twist")
    queryset = Message.objects.filter(content__icontains="세계를")
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a handful of rows: let the plan show the index can serve
        try:
            plan = queryset.explain()
        finally:
            cursor.execute("RESET enable_seqscan")
    assert "chat_message_content_trgm" in plan
    assert found(alice, "세계를") and found(alice, "twist")


def test_postgresql_reads_a_persons_messages_newest_first_from_their_own_index(alice, chat):
    """A common term: reading the person's messages newest first, stopping at the page's end, with
    no join to the conversations, nor a test of another person's texts (bench/search.py measures it)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's index of each message's owner")
    say(chat, "a common word")
    with CaptureQueriesContext(connection) as queries:
        search.search(alice, "common")
    sql = next(q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"] and "chat_message" in q["sql"])
    assert "chat_conversation" not in sql
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a handful of rows: let the plan show the index can serve
        cursor.execute("SET enable_bitmapscan = off")
        try:
            cursor.execute("EXPLAIN " + sql)
            plan = str(cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_bitmapscan")
    assert "Index Scan Backward using chat_message_owner_newest" in plan


def test_finds_a_prompt_by_the_text_of_its_file_and_only_its_owners(alice, bob, chat):
    prompt = say(chat, "Summarise this, please.")
    Attachment.objects.create(
        owner=alice, message=prompt, name="계약서.pdf", size=1, content_type="application/pdf", kind="pdf",
        text="제3조 임대료는 매월 말일에 지급한다.\fThe deposit is returned within 30 days.",
    )  # fmt: skip
    Attachment.objects.create(
        owner=alice, name="unsent.txt", size=1, content_type="text/plain", kind="text", text="임대료"
    )
    answer = say(chat, "임대료 is rent.", role="assistant")

    assert found(alice, "임대료") == [answer.pk, prompt.pk]  # by its text, then the prompt by its file's
    hit = search.search(alice, "deposit returned").messages[0]
    assert hit.message_id == prompt.pk and hit.snippet[0] == Part("계약서.pdf: ", False)
    assert Part("deposit", True) in hit.snippet
    assert found(bob, "임대료") == [] and found(bob, "deposit") == []
