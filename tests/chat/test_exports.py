"""Export and import: the formats, the round trip, ChatGPT's export, validation, all or nothing,
the page and the commands. These tests also run on PostgreSQL (tests/chat/test_postgresql.py)."""

import copy
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection
from django.test import Client, override_settings
from django.urls import reverse

from chat import branches, exports, imports, search
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

# Shaped as ChatGPT's data export writes conversations.json (field names, nesting, the hidden
# system message, an edited prompt's two branches, an empty assistant placeholder before the
# answer, a tool call and its output, reasoning, an image beside text); the texts are made up.
CHATGPT_EXPORT: list[dict[str, Any]] = [
    {
        "title": "런타임이 뭐예요",
        "create_time": 1749968327.886819,
        "update_time": 1749968388.920209,
        "mapping": {
            "client-created-root": {"id": "client-created-root", "message": None, "parent": None, "children": ["sys"]},
            "sys": {
                "id": "sys",
                "message": {
                    "id": "sys",
                    "author": {"role": "system", "name": None, "metadata": {}},
                    "create_time": None,
                    "update_time": None,
                    "content": {"content_type": "text", "parts": [""]},
                    "status": "finished_successfully",
                    "end_turn": True,
                    "weight": 0.0,
                    "metadata": {"is_visually_hidden_from_conversation": True},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "client-created-root",
                "children": ["u1-first", "u1-edited"],
            },
            "u1-first": {
                "id": "u1-first",
                "message": {
                    "id": "u1-first",
                    "author": {"role": "user", "name": None, "metadata": {}},
                    "create_time": 1749968338.648,
                    "content": {"content_type": "text", "parts": ["런타임이 뭐예요?"]},
                    "metadata": {},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "sys",
                "children": ["a1-first"],
            },
            "a1-first": {
                "id": "a1-first",
                "message": {
                    "id": "a1-first",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1749968340.0,
                    "content": {"content_type": "text", "parts": ["첫 번째 답변 (버려진 가지)"]},
                    "metadata": {"model_slug": "gpt-4o"},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "u1-first",
                "children": [],
            },
            "u1-edited": {
                "id": "u1-edited",
                "message": {
                    "id": "u1-edited",
                    "author": {"role": "user", "name": None, "metadata": {}},
                    "create_time": 1749968392.585,
                    "content": {
                        "content_type": "multimodal_text",
                        "parts": [
                            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc"},
                            ".NET 8.0 Desktop Runtime 가 뭐하는 프로그램이야\n 설치하지 않으면?",
                        ],
                    },
                    "metadata": {"request_id": "x"},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "sys",
                "children": ["placeholder"],
            },
            "placeholder": {
                "id": "placeholder",
                "message": {
                    "id": "placeholder",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1749968388.312682,
                    "content": {"content_type": "text", "parts": [""]},
                    "metadata": {"model_slug": "gpt-4o"},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "u1-edited",
                "children": ["thinking"],
            },
            "thinking": {
                "id": "thinking",
                "message": {
                    "id": "thinking",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1749968388.4,
                    "content": {"content_type": "thoughts", "thoughts": [{"summary": "Thinking", "content": "..."}]},
                    "metadata": {},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "placeholder",
                "children": ["tool-call"],
            },
            "tool-call": {
                "id": "tool-call",
                "message": {
                    "id": "tool-call",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1749968388.5,
                    "content": {"content_type": "code", "language": "unknown", "text": "search('.NET runtime')"},
                    "metadata": {},
                    "recipient": "web",
                    "channel": None,
                },
                "parent": "thinking",
                "children": ["tool-output"],
            },
            "tool-output": {
                "id": "tool-output",
                "message": {
                    "id": "tool-output",
                    "author": {"role": "tool", "name": "web", "metadata": {}},
                    "create_time": 1749968388.6,
                    "content": {"content_type": "text", "parts": ["results..."]},
                    "metadata": {},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "tool-call",
                "children": ["a1-edited"],
            },
            "a1-edited": {
                "id": "a1-edited",
                "message": {
                    "id": "a1-edited",
                    "author": {"role": "assistant", "name": None, "metadata": {}},
                    "create_time": 1749968382.438626,
                    "content": {
                        "content_type": "text",
                        "parts": ["Windows 데스크톱 앱을 실행하는 **런타임 환경**입니다."],
                    },
                    "status": "finished_successfully",
                    "end_turn": True,
                    "metadata": {"finish_details": {"type": "stop", "stop_tokens": [200002]}, "model_slug": "gpt-4o"},
                    "recipient": "all",
                    "channel": None,
                },
                "parent": "tool-output",
                "children": [],
            },
        },
        "moderation_results": [],
        "current_node": "a1-edited",
        "plugin_ids": None,
        "conversation_id": "684e65c7-c770-8007-9684-3f62b6f51677",
        "is_archived": True,
        "default_model_slug": "gpt-4o",
        "id": "684e65c7-c770-8007-9684-3f62b6f51677",
    },
    {
        "title": None,
        "create_time": 1700000000.0,
        "update_time": None,
        "mapping": {
            "root": {"id": "root", "message": None, "parent": None, "children": ["q"]},
            "q": {
                "id": "q",
                "message": {
                    "id": "q",
                    "author": {"role": "user"},
                    "create_time": None,
                    "content": {"content_type": "text", "parts": ["Untitled: what is a trigram?"]},
                },
                "parent": "root",
                "children": [],
            },
        },
        "current_node": "q",
    },
    {
        "title": "Only a picture",
        "create_time": 1700000001.0,
        "update_time": 1700000002.0,
        "mapping": {
            "root": {"id": "root", "message": None, "parent": None, "children": ["img"]},
            "img": {
                "id": "img",
                "message": {
                    "id": "img",
                    "author": {"role": "user"},
                    "content": {"content_type": "multimodal_text", "parts": [{"asset_pointer": "file-service://x"}]},
                },
                "parent": "root",
                "children": [],
            },
        },
        "current_node": "img",
    },
]


@pytest.fixture
def history(alice):
    """Alice's history: settings, a system prompt, Korean, an answer stopped with an error, measurements."""
    first = Conversation.objects.create(
        owner=alice, title="세계 여행", system_prompt="Answer in Korean.\nBe brief.", temperature=0.3, max_tokens=200
    )
    question = Message.objects.create(conversation=first, role="user", content="전세계를 여행하고 싶어요")
    Message.objects.create(
        conversation=first,
        parent=question,
        role="assistant",
        content="좋아요! 어디부터 갈까요?",
        prompt_tokens=21,
        completion_tokens=9,
        model_name="qwen2-7b-instruct",
        time_to_first_token=0.125,
        duration=1.5,
        finish_reason="stop",
    )
    second = Conversation.objects.create(owner=alice, title="Recipes <b>&</b> more", top_p=0.5)
    question = Message.objects.create(conversation=second, role="user", content="# Markdown stays *as is*")
    Message.objects.create(
        conversation=second,
        parent=question,
        role="assistant",
        content="Half an answer",
        status="error",
        error="vLLM went away.",
    )
    # Distinct, older timestamps, as a history has: an import must keep them.
    for n, conversation in enumerate([first, second]):
        when = datetime(2024, 5, 1 + n, 12, 30, 15, 123456, tzinfo=UTC)
        Conversation.objects.filter(pk=conversation.pk).update(created_at=when, updated_at=when + timedelta(hours=1))
        for m, message in enumerate(conversation.messages.in_order()):
            at = when + timedelta(minutes=m)
            Message.objects.filter(pk=message.pk).update(created_at=at, updated_at=at + timedelta(seconds=2))
    return [Conversation.objects.get(pk=first.pk), Conversation.objects.get(pk=second.pk)]


def exported(user) -> dict:
    return json.loads(exports.as_json(Conversation.objects.owned_by(user)))


def without_ids(export: dict) -> dict:
    """An export less what differs between two sites by design: ids, and when it was written."""
    export = copy.deepcopy(export)
    del export["exported_at"]
    for conversation in export["conversations"]:
        del conversation["id"]
        ids = {message["id"]: n for n, message in enumerate(conversation["messages"])}
        # The tree as places in the list, which are the same on both sites.
        conversation["branch_tip_id"] = ids.get(conversation["branch_tip_id"])
        for message in conversation["messages"]:
            del message["id"]
            message["parent_id"] = ids.get(message["parent_id"])
    return export


def as_file(document: object) -> bytes:
    return json.dumps(document).encode()  # \u escapes: a lone surrogate can be written too


# --- Export -------------------------------------------------------------------------------------


def test_the_json_export_holds_every_field(alice, history):
    export = exported(alice)
    assert export["format"] == "chatsite.conversations" and export["version"] == 2
    first = export["conversations"][1]  # newest first: the second conversation was updated later
    assert first["title"] == "세계 여행"
    assert first["system_prompt"] == "Answer in Korean.\nBe brief."
    assert (first["temperature"], first["max_tokens"], first["created_at"]) == (
        0.3,
        200,
        "2024-05-01T12:30:15.123456+00:00",
    )
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    answer = first["messages"][1]
    assert answer["content"] == "좋아요! 어디부터 갈까요?"
    assert (answer["prompt_tokens"], answer["completion_tokens"], answer["time_to_first_token"]) == (21, 9, 0.125)
    assert export["conversations"][0]["messages"][1]["error"] == "vLLM went away."


def test_the_markdown_export_reads_as_the_conversation(alice, history):
    markdown = exports.as_markdown(history[0])
    assert markdown.startswith("# 세계 여행\n")
    assert "> Answer in Korean.\n> Be brief." in markdown
    assert (
        "## You\n\n전세계를 여행하고 싶어요\n\n## Assistant (qwen2-7b-instruct)\n\n좋아요! 어디부터 갈까요?" in markdown
    )
    broken = exports.as_markdown(history[1])
    assert "# Markdown stays *as is*" in broken
    assert "*Error: vLLM went away.*" in broken


def test_an_export_imported_into_another_account_exports_the_same(alice, bob, history):
    """The round trip: only the ids (each site's own) and the export's own time differ."""
    Conversation.objects.create(owner=alice, title="")  # made through the API, never used: kept all the same
    before = exported(alice)
    report = imports.import_file(bob, as_file(before))
    assert (report.format, len(report.imported), report.message_count) == ("chatsite", 3, 4)
    after = exported(bob)
    assert without_ids(after) == without_ids(before)
    assert {c["id"] for c in after["conversations"]}.isdisjoint({c["id"] for c in before["conversations"]})
    # Alice's history is untouched; Bob's imported conversations are his, and found by his search.
    assert without_ids(exported(alice)) == without_ids(before)
    assert [hit.conversation_title for hit in search.search(bob, "세계를").messages] == ["세계 여행"]


def test_an_import_never_reaches_into_another_persons_history(alice, bob, history):
    # The file names Alice's conversations and messages by id: Bob gets copies, Alice keeps hers.
    export = exported(alice)
    export["conversations"][0]["title"] = "Bob's now"
    imports.import_file(bob, as_file(export))
    assert set(Conversation.objects.filter(owner=alice).values_list("title", flat=True)) == {
        "세계 여행",
        "Recipes <b>&</b> more",
    }
    assert Conversation.objects.filter(owner=bob, title="Bob's now").exists()
    assert Message.objects.filter(conversation__owner=alice).count() == 4


def test_an_answer_exported_while_streaming_is_imported_as_interrupted(bob):
    export = {
        "format": "chatsite.conversations",
        "version": 1,
        "conversations": [{"title": "Mid-answer", "messages": [
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": "Half", "status": "streaming"},
        ]}],
    }  # fmt: skip
    imports.import_file(bob, as_file(export))
    answer = Message.objects.get(role="assistant")
    assert (answer.status, answer.content) == ("interrupted", "Half")
    assert "still being written" in answer.error


# --- Branches -------------------------------------------------------------------------------------


@pytest.fixture
def branched(alice) -> Conversation:
    """Q → A, A regenerated as A2; Q edited as Q2 → B; the branch shown ends at A2."""
    conversation = Conversation.objects.create(owner=alice, title="Branched")
    q = Message.objects.create(conversation=conversation, role="user", content="Question")
    Message.objects.create(conversation=conversation, parent=q, role="assistant", content="First answer")
    a2 = Message.objects.create(conversation=conversation, parent=q, role="assistant", content="Second answer")
    q2 = Message.objects.create(conversation=conversation, role="user", content="Better question")
    Message.objects.create(conversation=conversation, parent=q2, role="assistant", content="Better answer")
    conversation.branch_tip = a2
    conversation.save()
    return conversation


def test_every_version_is_exported_with_what_it_follows_and_the_markdown_is_the_branch_shown(alice, branched):
    [record] = exported(alice)["conversations"]
    by_id = {m["id"]: m for m in record["messages"]}
    assert [(m["content"], by_id[m["parent_id"]]["content"] if m["parent_id"] else None) for m in by_id.values()] == [
        ("Question", None),
        ("First answer", "Question"),
        ("Second answer", "Question"),
        ("Better question", None),
        ("Better answer", "Better question"),
    ]
    assert by_id[record["branch_tip_id"]]["content"] == "Second answer"
    markdown = exports.as_markdown(branched)
    assert "Question" in markdown and "Second answer" in markdown
    assert "First answer" not in markdown and "Better" not in markdown


def test_a_branched_conversation_comes_back_with_its_versions_and_the_branch_shown(alice, bob, branched):
    before = exported(alice)
    imports.import_file(bob, as_file(before))
    assert without_ids(exported(bob)) == without_ids(before)
    imported = Conversation.objects.get(owner=bob)
    assert [m.content for m, _ in branches.shown_branch(imported)] == ["Question", "Second answer"]
    [(_, versions)] = [(m, v) for m, v in branches.shown_branch(imported) if m.role == "user"]
    assert versions.count == 2


def test_a_version_1_export_is_imported_as_one_line(bob):
    imports.import_file(bob, site_export({"title": "Old", "messages": [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ]}))  # fmt: skip
    conversation = Conversation.objects.get(owner=bob)
    assert [m.content for m, _ in branches.shown_branch(conversation)] == ["One", "Two", "Three"]


def test_a_tree_that_does_not_hold_together_is_refused(bob):
    document = {"format": "chatsite.conversations", "version": 2, "conversations": [{"branch_tip_id": 9, "messages": [
        {"id": 1, "role": "user", "content": "One"},
        {"id": 2, "parent_id": 3, "role": "assistant", "content": "Two"},
        {"id": 3, "parent_id": 1, "role": "assistant", "content": "Three"},
        {"id": 3, "parent_id": 1, "role": "assistant", "content": "Again"},
    ]}]}  # fmt: skip
    assert refusal(bob, as_file(document)) == [
        "conversations[0].messages[1].parent_id: No message before this one has this id.",
        "conversations[0].messages[3].id: Another message of this conversation has this id.",
        "conversations[0].branch_tip_id: No message of this conversation has this id.",
    ]


# --- ChatGPT's export ----------------------------------------------------------------------------


def test_chatgpts_export_imports_the_branch_chatgpt_showed(bob):
    report = imports.import_file(bob, as_file(CHATGPT_EXPORT))
    assert report.format == "chatgpt"
    runtime, untitled = Conversation.objects.filter(owner=bob).order_by("created_at").reverse()
    assert runtime.title == "런타임이 뭐예요"
    messages = list(runtime.messages.in_order())
    assert [(m.role, m.content) for m in messages] == [
        ("user", ".NET 8.0 Desktop Runtime 가 뭐하는 프로그램이야\n 설치하지 않으면?"),
        ("assistant", "Windows 데스크톱 앱을 실행하는 **런타임 환경**입니다."),
    ]
    assert (messages[1].model_name, messages[1].finish_reason, messages[1].status) == ("gpt-4o", "stop", "complete")
    assert messages[0].created_at == datetime.fromtimestamp(1749968392.585, UTC)
    # ChatGPT dated the answer before the edited prompt it answers: the import keeps the branch's
    # order, never putting an answer before its prompt.
    assert messages[1].created_at == messages[0].created_at
    # One branch, shown, which the next prompt continues.
    assert [m for m, _ in branches.shown_branch(runtime)] == messages
    assert messages[1].parent == messages[0] and runtime.branch_tip == messages[1]
    assert runtime.created_at == datetime.fromtimestamp(1749968327.886819, UTC)
    # An untitled conversation is named after its first prompt, as the site names its own.
    assert untitled.title == "Untitled: what is a trigram?"
    assert untitled.messages.get().created_at == untitled.created_at

    # The report says what was left out, and why.
    first = report.imported[0]
    assert (first.title, first.messages) == ("런타임이 뭐예요", 2)
    assert first.left_out == {
        imports.NOT_SHOWN: 3,  # the hidden system message, the tool call, the tool's output
        imports.ATTACHMENTS: 1,
        imports.EMPTY: 1,
        imports.NOT_TEXT: 1,
        imports.OTHER_BRANCHES: 2,  # the first prompt and its answer, before it was edited
    }
    assert [(r.where, r.title, r.reason) for r in report.refused] == [("[2]", "Only a picture", "no text to import")]
    assert not Conversation.objects.filter(title="Only a picture").exists()
    assert "Imported 2 conversation(s) with 3 message(s)" in report.summary
    assert "[2] “Only a picture” (no text to import)" in report.summary


def test_chatgpts_zip_is_read_as_it_is_downloaded(bob):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("chat.html", "<html></html>")
        zipped.writestr("conversations.json", as_file(CHATGPT_EXPORT))
    report = imports.import_file(bob, archive.getvalue())
    assert len(report.imported) == 2


def test_chatgpts_tree_must_lead_back_to_its_root(bob):
    missing = copy.deepcopy(CHATGPT_EXPORT)
    missing[0]["current_node"] = "nowhere"
    looping = copy.deepcopy(CHATGPT_EXPORT)
    looping[1]["mapping"]["root"]["parent"] = "q"
    for broken, where in ((missing, "[0].current_node"), (looping, "[1].current_node")):
        with pytest.raises(imports.ImportRefused) as refused:
            imports.import_file(bob, as_file(broken))
        assert [problem.where for problem in refused.value.problems] == [where]
    assert not Conversation.objects.exists()


def test_chatgpts_finish_details_of_an_unknown_kind_are_no_finish_reason(bob):
    # Anything may be in a file: a type that is not a string (a list cannot even be a dict key)
    # was a 500 rather than no finish reason.
    odd = copy.deepcopy(CHATGPT_EXPORT)
    metadata = odd[0]["mapping"]["a1-edited"]["message"]["metadata"]
    metadata["finish_details"] = {"type": ["stop"]}
    imports.import_file(bob, as_file(odd))
    answer = Message.objects.get(conversation__owner=bob, role="assistant")
    assert (answer.content, answer.finish_reason) == ("Windows 데스크톱 앱을 실행하는 **런타임 환경**입니다.", "")


# --- Refused files: nothing imported, every problem said -------------------------------------------


def refusal(user, data: bytes) -> list[str]:
    with pytest.raises(imports.ImportRefused) as refused:
        imports.import_file(user, data)
    assert not Conversation.objects.filter(owner=user).exists()
    return [str(problem) for problem in refused.value.problems]


def site_export(*conversations: dict) -> bytes:
    return as_file({"format": "chatsite.conversations", "version": 1, "conversations": list(conversations)})


def test_a_file_that_is_not_an_export_is_refused(bob):
    assert refusal(bob, b"not json")[0].startswith("file: The file is not valid JSON: Expecting value at line 1")
    assert "neither this site's export" in refusal(bob, b'{"conversations": []}')[0]
    assert "neither this site's export" in refusal(bob, b"[1, 2]")[0]
    assert "not text in UTF-8" in refusal(bob, b'"\xff\xfe\xfa"')[0]
    assert "nested too deeply" in refusal(bob, b"[" * 100_000 + b"]" * 100_000)[0]
    assert "NaN is not a number JSON allows" in refusal(bob, b'{"format": "chatsite.conversations", "x": NaN}')[0]
    assert "holds no conversations.json" in refusal(bob, _zip({"other.json": b"[]"}))[0]


def _zip(members: dict[str, bytes]) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return archive.getvalue()


def test_every_problem_is_listed_with_where_it_is_and_nothing_is_imported(bob):
    good = {"title": "fine", "messages": [{"role": "user", "content": "hello"}]}
    problems = refusal(
        bob,
        site_export(
            good,
            {"title": "x" * 201, "temperature": 9, "messages": [{"role": "robot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": 5, "surprise": True}]},
            {"messages": [{"role": "user", "content": "NUL \x00 inside"}, {"role": "user", "content": "\ud800"}]},
        ),
    )
    assert problems == [
        "conversations[1].title: String should have at most 200 characters",
        "conversations[1].temperature: Temperature must be between 0 and 2.",
        "conversations[1].messages[0].role: Input should be 'user' or 'assistant'",
        "conversations[2].messages[0].content: Input should be a valid string",
        "conversations[2].messages[0].surprise: Extra inputs are not permitted",
        "conversations[3].messages[0].content: Holds a NUL character, which cannot be stored.",
        "conversations[3].messages[1].content: Must be valid Unicode text.",
    ]


@override_settings(CHAT_IMPORT_MAX_BYTES=1000)
def test_a_file_over_the_size_limit_is_refused_before_it_is_read(bob):
    big = site_export({"messages": [{"role": "user", "content": "x" * 2000}]})
    assert refusal(bob, big) == ["file: The file is larger than the 1,000 bytes an import may be."]
    # A zip says how large its file is: a small archive of a large file is refused before it is unpacked.
    assert refusal(bob, _zip({"conversations.json": b"[" + b" " * 100_000 + b"]"})) == [
        "file: The file is larger than the 1,000 bytes an import may be."
    ]
    stream = io.BytesIO(big)
    with pytest.raises(imports.ImportTooLarge):
        imports.import_file(bob, stream)
    assert stream.tell() == 1001  # read no further than needed to know


# A trigger that makes the database refuse one insert, as a full disk or a lost connection would.
REFUSE_POISON = {
    "sqlite": (
        [
            "CREATE TEMP TRIGGER refuse_poison BEFORE INSERT ON chat_message WHEN new.content = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ],
        ["DROP TRIGGER refuse_poison"],
    ),
    "postgresql": (
        [
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.content = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON chat_message FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ],
        ["DROP TRIGGER refuse_poison ON chat_message", "DROP FUNCTION refuse_poison"],
    ),
}


@pytest.mark.django_db(transaction=True)
def test_a_failure_while_saving_leaves_nothing_behind(bob):
    """All or nothing even when the database refuses a row halfway: the transaction takes it all back."""
    create, drop = REFUSE_POISON[connection.vendor]
    with connection.cursor() as cursor:
        for statement in create:
            cursor.execute(statement)
    try:
        first = {"title": "first", "messages": [{"role": "user", "content": "fine"}]}
        second = {"title": "second", "messages": [{"role": "user", "content": "poison"}]}
        with pytest.raises(DatabaseError, match="refused by the test"):
            imports.import_file(bob, site_export(first, second))
    finally:
        with connection.cursor() as cursor:
            for statement in drop:
                cursor.execute(statement)
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert search.search(bob, "fine").messages == []


# --- The page -----------------------------------------------------------------------------------


def test_the_page_exports_a_conversation_as_markdown_and_json(client: Client, alice, history):
    client.force_login(alice)
    first = history[0]
    markdown = client.get(reverse("chat:export-markdown", args=[first.pk]))
    assert markdown.status_code == 200
    assert markdown["Content-Type"] == "text/markdown; charset=utf-8"
    assert (
        markdown["Content-Disposition"]
        == f"attachment; filename*=utf-8''%EC%84%B8%EA%B3%84-%EC%97%AC%ED%96%89-{first.pk}.md"
    )
    assert markdown.content.decode() == exports.as_markdown(first)
    one = client.get(reverse("chat:export-json", args=[first.pk]))
    assert [c["title"] for c in json.loads(one.content)["conversations"]] == ["세계 여행"]


# The test client is synchronous; the site under ASGI streams it as it is (tests/chat/test_browser.py).
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_the_page_exports_everything_of_the_persons_own(client: Client, alice, bob, history):
    Conversation.objects.create(owner=bob, title="Bob's")
    client.force_login(alice)
    response = client.get(reverse("chat:export"))
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    export = json.loads(b"".join(response))  # streamed
    assert [c["title"] for c in export["conversations"]] == ["Recipes <b>&</b> more", "세계 여행"]


def test_another_persons_conversation_is_not_exported(client: Client, bob, history):
    client.force_login(bob)
    for name in ("chat:export-markdown", "chat:export-json"):
        assert client.get(reverse(name, args=[history[0].pk])).status_code == 404


def test_the_page_imports_a_file_and_reports_it(client: Client, alice, bob, history):
    client.force_login(bob)
    assert b'enctype="multipart/form-data"' in client.get(reverse("chat:import")).content
    upload = io.BytesIO(exports.as_json(Conversation.objects.owned_by(alice)).encode())
    upload.name = "conversations.json"
    response = client.post(reverse("chat:import"), {"file": upload})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Imported 2 conversations with 4 messages" in html
    imported = Conversation.objects.get(owner=bob, title="세계 여행")
    assert f'href="/c/{imported.pk}/"' in html
    assert "Recipes &lt;b&gt;&amp;&lt;/b&gt; more" in html


def test_the_page_explains_a_refused_file(client: Client, bob):
    client.force_login(bob)
    upload = io.BytesIO(site_export({"messages": [{"role": "robot", "content": "x"}]}))
    upload.name = "bad.json"
    response = client.post(reverse("chat:import"), {"file": upload})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Nothing was imported" in html and "<code>conversations[0].messages[0].role</code>" in html
    assert client.post(reverse("chat:import"), {}).status_code == 400
    assert not Conversation.objects.exists()


@override_settings(CHAT_IMPORT_MAX_BYTES=1000)
def test_the_page_refuses_too_large_a_file(client: Client, bob):
    client.force_login(bob)
    upload = io.BytesIO(b"[" + b" " * 200_000 + b"]")
    upload.name = "big.json"
    response = client.post(reverse("chat:import"), {"file": upload})  # refused by its declared length
    assert response.status_code == 413
    assert "larger than the 1,000 bytes" in response.content.decode()
    upload = io.BytesIO(b"[" + b" " * 5_000 + b"]")
    upload.name = "big.json"
    assert client.post(reverse("chat:import"), {"file": upload}).status_code == 413  # measured


def test_importing_from_the_page_needs_the_csrf_token(bob):
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    upload = io.BytesIO(as_file(CHATGPT_EXPORT))
    upload.name = "conversations.json"
    assert client.post(reverse("chat:import"), {"file": upload}).status_code == 403
    assert not Conversation.objects.exists()


# --- The commands -------------------------------------------------------------------------------


def test_the_commands_export_and_import(alice, bob, history, tmp_path, capsys):
    call_command("exportchats", "alice")
    assert without_ids(json.loads(capsys.readouterr().out)) == without_ids(exported(alice))
    path = tmp_path / "alice.json"
    call_command("exportchats", "alice", "--output", str(path))
    call_command("importchats", "bob", str(path))
    assert capsys.readouterr().out.startswith("Imported 2 conversation(s) with 4 message(s)")
    assert without_ids(exported(bob)) == without_ids(exported(alice))
    call_command("exportchats", "alice", "--conversation", str(history[0].pk), "--markdown")
    assert capsys.readouterr().out == exports.as_markdown(history[0])


def test_the_commands_say_what_is_wrong(alice, bob, history, tmp_path):
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("exportchats", "nobody")
    with pytest.raises(CommandError, match="bob has no conversation"):
        call_command("exportchats", "bob", "--conversation", str(history[0].pk))
    with pytest.raises(CommandError, match="--markdown exports one conversation"):
        call_command("exportchats", "alice", "--markdown")
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("importchats", "bob", str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "chatsite.conversations", "version": 3, "conversations": []}')
    with pytest.raises(CommandError, match=r"Nothing was imported: version: Input should be 1 or 2"):
        call_command("importchats", "bob", str(bad))


@pytest.mark.parametrize("name", ["chat:export", "chat:import", "chat:export-markdown", "chat:export-json"])
def test_signed_out_visitors_are_sent_to_sign_in(client: Client, history, name):
    url = reverse(name, args=[history[0].pk]) if name.startswith("chat:export-") else reverse(name)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


async def test_a_download_cut_short_closes_its_reading_on_the_thread_that_read():
    # Its database cursor is open mid-read: closed anywhere else (or never), it would hold that
    # thread's connection, which serves the thread's next requests, to an old snapshot.
    import threading

    from asgiref.sync import ThreadSensitiveContext

    from chat.exports import in_thread

    read_on: list[int] = []
    closed_on: list[int] = []

    def chunks():
        try:
            while True:
                read_on.append(threading.get_ident())
                yield "x"
        finally:
            closed_on.append(threading.get_ident())

    async with ThreadSensitiveContext():
        reading = in_thread(chunks(), batch=2)
        assert await anext(reading) == "xx"
        await reading.aclose()

    assert closed_on == [read_on[0]]
