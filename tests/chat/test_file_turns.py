"""A prompt's files in the turn (chat/file_context.py): the model reads them, whole or cut with a
note in the answer's footer, or the prompt is refused; regenerating and editing keep them; deleting
the conversation deletes them. Against the fake vLLM, whose requests show what the model received."""

import pytest
from asgiref.sync import sync_to_async

from chat import turns
from chat.models import Attachment, Conversation, FileChoice, Message
from tests.chat.test_turns import run_to_end

pytestmark = pytest.mark.django_db(transaction=True)

BUDGET_LINE = "The budget for Busan is 3,000,000 won."


@pytest.fixture(autouse=True)
def files_root(settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path / "files"
    return settings.CHAT_FILES_ROOT


@pytest.fixture
async def conversation(alice):
    return await Conversation.objects.acreate(owner=alice)


def stored_file(owner, name: str, text: str, *, pages: int | None = None) -> Attachment:
    attachment = Attachment.objects.create(
        owner=owner, name=name, size=len(text.encode()), content_type="text/plain", kind="text", text=text, pages=pages
    )
    attachment.path.parent.mkdir(parents=True, exist_ok=True)
    attachment.path.write_text(text)
    return attachment


def sent_prompt(fake_vllm) -> str:
    return fake_vllm.requests[-1]["messages"][-1]["content"]


async def test_the_model_reads_the_files_text_under_its_name_before_the_prompt(conversation, alice, fake_vllm):
    notes = await sync_to_async(stored_file)(alice, "notes.txt", BUDGET_LINE)
    fake_vllm.reply = ["3,000,000 won."]
    prompt, answer = await turns.start_turn(conversation, "What is the budget?", files=[notes])
    _, ended = await run_to_end(answer)

    expected = f"[File: notes.txt]\n{BUDGET_LINE}\n[End of file: notes.txt]\n\nWhat is the budget?"
    assert sent_prompt(fake_vllm) == expected
    assert ended.status == Message.Status.COMPLETE and ended.files_cut == []
    # Kept with the prompt, which is stored as typed.
    await notes.arefresh_from_db()
    assert notes.message_id == prompt.pk and prompt.content == "What is the budget?"


async def test_regenerating_and_later_turns_read_the_prompts_files_again(conversation, alice, fake_vllm):
    notes = await sync_to_async(stored_file)(alice, "notes.txt", BUDGET_LINE)
    _, answer = await turns.start_turn(conversation, "What is the budget?", files=[notes])
    await run_to_end(answer)
    await run_to_end((await turns.regenerate(conversation, answer)).answer)
    assert BUDGET_LINE in sent_prompt(fake_vllm)

    # A follow-up still has the file: before the new question, once, and the history as it was.
    _, later = await turns.start_turn(conversation, "And in dollars?")
    await run_to_end(later)
    history = fake_vllm.requests[-1]["messages"]
    assert history[0]["content"] == "What is the budget?"
    assert history[-1]["content"] == f"[File: notes.txt]\n{BUDGET_LINE}\n[End of file: notes.txt]\n\nAnd in dollars?"


async def test_a_follow_up_to_a_long_file_reads_it_cut_again_and_says_so(conversation, alice, fake_vllm):
    report = await sync_to_async(stored_file)(alice, "report.pdf", pdf_pages(40, 100), pages=40)
    _, answer = await turns.start_turn(conversation, "Summarise it.", files=[report])
    await run_to_end(answer)
    _, later = await turns.start_turn(conversation, "And the last page?")
    _, ended = await run_to_end(later)
    assert [cut["name"] for cut in ended.files_cut] == ["report.pdf"]
    assert sent_prompt(fake_vllm).startswith("[File: report.pdf]\np1w0")


async def test_an_edited_prompt_keeps_its_files_as_a_copy_of_its_own(conversation, alice, fake_vllm):
    notes = await sync_to_async(stored_file)(alice, "notes.txt", BUDGET_LINE)
    prompt, answer = await turns.start_turn(conversation, "What is the budget?", files=[notes])
    await run_to_end(answer)
    edited, edited_answer = await turns.edit_prompt(conversation, prompt, "How much is the budget?")
    await run_to_end(edited_answer)

    assert sent_prompt(fake_vllm).startswith("[File: notes.txt]\n" + BUDGET_LINE)
    copy = await Attachment.objects.aget(message=edited)
    assert copy.pk != notes.pk and copy.name == "notes.txt" and copy.path.read_text() == BUDGET_LINE
    await notes.arefresh_from_db()
    assert notes.message_id == prompt.pk  # the first version keeps its own


def pdf_pages(count: int, words_per_page: int) -> str:
    return "\f".join(" ".join(f"p{page}w{word}" for word in range(words_per_page)) for page in range(1, count + 1))


async def test_a_file_too_long_is_cut_at_whole_pages_and_the_answer_says_which(conversation, alice, fake_vllm):
    # 40 pages of 100 words: about 4,000 tokens for the fake vLLM, whose context is 2,048.
    report = await sync_to_async(stored_file)(alice, "report.pdf", pdf_pages(40, 100), pages=40)
    _, answer = await turns.start_turn(conversation, "Summarise it.", files=[report])
    _, ended = await run_to_end(answer)

    assert ended.status == Message.Status.COMPLETE
    [cut] = ended.files_cut
    assert cut["name"] == "report.pdf" and cut["pages"] == 40 and 1 <= cut["used_pages"] < 40
    used = cut["used_pages"]
    sent = sent_prompt(fake_vllm)
    assert f"p{used}w99" in sent and f"p{used + 1}w0" not in sent
    assert f"[End of file: report.pdf; only pages 1-{used} of 40]" in sent
    stored = await Message.objects.aget(pk=answer.pk)
    assert stored.files_cut == ended.files_cut  # kept for the footer


async def test_a_text_too_long_is_cut_by_characters(conversation, alice, fake_vllm):
    log = await sync_to_async(stored_file)(alice, "server.log", "\n".join(f"line {n} ok" for n in range(3000)))
    _, answer = await turns.start_turn(conversation, "Any errors?", files=[log])
    _, ended = await run_to_end(answer)
    [cut] = ended.files_cut
    assert cut["chars"] == len(log.text) and 0 < cut["used_chars"] < cut["chars"]
    assert "line 0 ok" in sent_prompt(fake_vllm) and "line 2999 ok" not in sent_prompt(fake_vllm)


async def test_a_person_who_chose_refuse_gets_no_answer_and_nothing_is_sent(conversation, alice, fake_vllm):
    await FileChoice.objects.acreate(person=alice, when_too_long=FileChoice.WhenTooLong.REFUSE)
    report = await sync_to_async(stored_file)(alice, "report.pdf", pdf_pages(40, 100), pages=40)
    _, answer = await turns.start_turn(conversation, "Summarise it.", files=[report])
    _, ended = await run_to_end(answer)

    assert ended.status == Message.Status.ERROR
    assert "too long for the model's context: report.pdf" in ended.error
    assert fake_vllm.requests == []


async def test_deleting_the_conversation_deletes_its_files_rows_and_bytes(conversation, alice, fake_vllm):
    notes = await sync_to_async(stored_file)(alice, "notes.txt", BUDGET_LINE)
    prompt, answer = await turns.start_turn(conversation, "What is the budget?", files=[notes])
    await run_to_end(answer)
    await turns.edit_prompt(conversation, prompt, "Again?")  # a copy, linked to the same bytes
    paths = [attachment.path async for attachment in Attachment.objects.all()]
    assert len(paths) == 2 and all(path.exists() for path in paths)

    await conversation.adelete()

    assert not await Attachment.objects.aexists()
    assert not any(path.exists() for path in paths)


def test_the_room_is_shared_fairly_between_files_each_taking_no_more_than_it_needs():
    from chat.file_context import _shares

    assert _shares(100, [10, 500, 500]) == [10, 45, 45]  # the small file whole, the rest split
    assert _shares(100, [30, 30]) == [30, 30]
    assert _shares(0, [10, 20]) == [0, 0] and _shares(-5, [10]) == [0]


async def test_two_long_files_are_both_cut_and_both_said(conversation, alice, fake_vllm):
    first = await sync_to_async(stored_file)(alice, "a.pdf", pdf_pages(30, 100), pages=30)
    second = await sync_to_async(stored_file)(alice, "b.txt", " ".join(f"w{n}" for n in range(3000)))
    _, answer = await turns.start_turn(conversation, "Compare them.", files=[first, second])
    _, ended = await run_to_end(answer)
    assert ended.status == Message.Status.COMPLETE
    assert [cut["name"] for cut in ended.files_cut] == ["a.pdf", "b.txt"]
    sent = sent_prompt(fake_vllm)
    assert sent.index("[File: a.pdf]") < sent.index("[File: b.txt]") < sent.index("Compare them.")
