"""Regenerate, edit, versions, the settings panel and each answer's figures, in a real Chromium.

The site runs in its own daphne process (`live_site`) and answers from the fake vLLM, which records
what the model was sent: so each test checks that the model sees the branch on screen.
"""

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from chat.models import Conversation, Message
from tests.browser import answers, open_settings, prompt_box, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sent_history(fake_vllm) -> list[str]:
    """The texts the model was sent last, the system prompt left out."""
    return [m["content"] for m in fake_vllm.requests[-1]["messages"] if m["role"] != "system"]


def thread_texts(page: Page) -> Locator:
    """The texts of the messages on screen, in order."""
    return page.locator("#thread article .body")


def ask(page: Page, fake_vllm, prompt: str, *reply: str) -> None:
    """Send a prompt and wait for its whole answer."""
    fake_vllm.reply = list(reply)
    prompt_box(page).fill(prompt)
    prompt_box(page).press("Enter")
    expect(answers(page).last.locator(".body")).to_have_text("".join(reply))
    expect(answers(page).last.locator(".regenerate")).to_be_visible()


def message(page: Page, text: str) -> Locator:
    """The message on screen whose text is `text` (an answer's is rendered: its paragraph is)."""
    return page.locator("#thread article").filter(has=page.locator(".body").get_by_text(text, exact=True))


def test_regenerate_edit_and_step_between_versions(signed_in: Page, fake_vllm, live_site):
    page = signed_in
    ask(page, fake_vllm, "First", "One.")
    ask(page, fake_vllm, "Second", "Two.")
    conversation = Conversation.objects.get()

    # Regenerate: a new answer to the same prompt, with the same history; the old one is a version.
    fake_vllm.reply = ["Two,", " again."]
    message(page, "Two.").get_by_role("button", name="Regenerate").click()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second", "Two, again."])
    regenerated = answers(page).last
    expect(regenerated.locator(".versions .position")).to_have_text("2 / 2")
    expect(regenerated.get_by_role("button", name="Regenerate")).to_be_visible()
    assert sent_history(fake_vllm) == ["First", "One.", "Second"]
    screenshot(page, "branches-regenerated")

    # Previous version: the earlier answer, still shown after a reload.
    regenerated.get_by_role("button", name="Previous version").click()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second", "Two."])
    expect(answers(page).last.locator(".versions .position")).to_have_text("1 / 2")
    expect(answers(page).last.get_by_role("button", name="Previous version")).to_be_disabled()
    page.reload()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second", "Two."])
    answers(page).last.get_by_role("button", name="Next version").click()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second", "Two, again."])

    # Edit a prompt: a new branch from there; the model is sent the history before it.
    second = message(page, "Second")
    second.get_by_role("button", name="Edit").click()
    second.get_by_label("Edited message").fill("Second, edited")
    fake_vllm.reply = ["Edited", " answer."]
    second.get_by_role("button", name="Send").click()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second, edited", "Edited answer."])
    expect(message(page, "Second, edited").locator(".versions .position")).to_have_text("2 / 2")
    assert sent_history(fake_vllm) == ["First", "One.", "Second, edited"]
    screenshot(page, "branches-edited")

    # The next prompt continues the branch on screen.
    ask(page, fake_vllm, "Third", "Three.")
    assert sent_history(fake_vllm) == ["First", "One.", "Second, edited", "Edited answer.", "Third"]

    # Back to the earlier prompt: its branch as it was left, and a prompt sent there is answered with it.
    message(page, "Second, edited").get_by_role("button", name="Previous version").click()
    expect(thread_texts(page)).to_have_text(["First", "One.", "Second", "Two, again."])
    ask(page, fake_vllm, "Fourth", "Four.")
    assert sent_history(fake_vllm) == ["First", "One.", "Second", "Two, again.", "Fourth"]

    # Another tab, and the REST API, see the same branch.
    shown = ["First", "One.", "Second", "Two, again.", "Fourth", "Four."]
    other = page.context.new_page()
    other.goto(f"/c/{conversation.pk}/")
    expect(thread_texts(other)).to_have_text(shown)
    api = other.request.get(f"/api/conversations/{conversation.pk}").json()
    assert [m["content"] for m in api["messages"]] == shown
    other.close()
    assert Message.objects.count() == 11  # nothing lost: every version is kept


def test_a_regenerated_answer_streams_in_another_tab_and_stops_keeping_the_old_one(signed_in: Page, fake_vllm):
    page = signed_in
    ask(page, fake_vllm, "Count", "one two three")
    conversation = Conversation.objects.get()

    fake_vllm.reply = [f" word{i}" for i in range(400)]
    fake_vllm.token_delay = 0.03
    answers(page).last.get_by_role("button", name="Regenerate").click()
    expect(answers(page).last.locator(".body")).to_contain_text("word3")
    # While it streams, no other turn starts from the page.
    expect(answers(page).last.locator(".versions")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()

    other = page.context.new_page()
    other.goto(f"/c/{conversation.pk}/")
    expect(answers(other).last.locator(".body")).to_contain_text("word20")

    answers(page).last.get_by_role("button", name="Stop").click()
    expect(answers(page).last.locator(".status")).to_have_text("Stopped")
    expect(answers(other).last.locator(".status")).to_have_text("Stopped")
    assert fake_vllm.wait_for_disconnect()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    other.close()

    answers(page).last.get_by_role("button", name="Previous version").click()
    expect(answers(page).last.locator(".body")).to_have_text("one two three")
    old, new = Message.objects.filter(role="assistant").order_by("pk")
    assert (old.status, new.status) == ("complete", "stopped")


def test_the_settings_panel_saves_what_the_next_answers_use(signed_in: Page, fake_vllm):
    page = signed_in
    # A new chat's settings go with its first prompt.
    open_settings(page)
    page.get_by_label("System prompt").fill("Answer like a pirate.")
    page.get_by_label("Max tokens").fill("99")
    ask(page, fake_vllm, "Hello", "Ahoy.")
    conversation = Conversation.objects.get()
    assert fake_vllm.requests[-1]["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert fake_vllm.requests[-1]["max_tokens"] == 99
    expect(page.locator("#settings-summary")).to_contain_text("up to 99 tokens · system prompt")

    # In a conversation, each change is saved as it is made; a regenerated answer uses it.
    panel = page.locator("#settings")
    page.get_by_label("System prompt").fill("Answer like a poet.")
    page.get_by_label("Top p").fill("0.5")
    page.get_by_label("Top p").press("Tab")
    expect(panel.locator(".saved")).to_have_text("Saved for this conversation.")
    expect(page.locator("#settings-summary")).to_contain_text("top p 0.5")  # once both changes are saved
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.top_p) == ("Answer like a poet.", 0.5)
    fake_vllm.reply = ["Roses."]
    answers(page).last.get_by_role("button", name="Regenerate").click()
    expect(answers(page).last.locator(".body")).to_have_text("Roses.")
    sent = fake_vllm.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a poet."}
    assert (sent["top_p"], sent["max_tokens"]) == (0.5, 99)

    # Out of bounds: said in the panel, with the API's words, and nothing saved.
    page.get_by_label("Top p").fill("7")
    page.get_by_label("Top p").press("Tab")
    expect(panel.get_by_role("alert")).to_have_text("Top p must be between 0.01 and 1.")
    conversation.refresh_from_db()
    assert conversation.top_p == 0.5
    screenshot(page, "settings-panel")

    # Found again after a reload.
    page.reload()
    open_settings(page)
    expect(page.get_by_label("System prompt")).to_have_value("Answer like a poet.")
    expect(page.get_by_label("Top p")).to_have_value("0.5")


def test_each_answer_shows_its_model_speed_and_tokens_live_and_after_a_reload(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.token_delay = 0.02
    ask(page, fake_vllm, "Count to ten", *[f"{i} " for i in range(1, 11)])

    def figures(moment: str) -> list[str]:
        footer = answers(page).last.locator(".meta")
        expect(footer.locator(".model"), moment).to_have_text("qwen2-7b-instruct")
        expect(footer.locator(".first-token"), moment).to_have_text(re.compile(r"^\d+\.\d\d s to first token$"))
        expect(footer.locator(".speed"), moment).to_have_text(re.compile(r"^\d+\.\d tokens/s$"))
        expect(footer.locator(".usage"), moment).to_have_text("10 tokens")
        expect(footer.locator(".prompt-tokens"), moment).to_have_text(re.compile(r"^\d+ tokens read$"))
        return [text.strip() for text in footer.locator("span").all_text_contents()]

    live = figures("live")
    page.reload()
    assert figures("reloaded") == live
    answer = Message.objects.get(role="assistant")
    speed = answer.tokens_per_second
    assert speed is not None and f"{speed:.1f} tokens/s" in live
    # About one token each 20 ms: tens of tokens a second, not thousands or one.
    assert 5 < speed < 200
