"""The temporary chat and a shared link's page in Chromium, against the live site and the fake vLLM;
each page checked by axe-core (as tests/chat/test_screens.py checks the others)."""

import re

import pytest
from playwright.sync_api import Page, expect

from chat import sharing
from chat.models import Conversation, Message, SharedLink
from tests.browser import LANGUAGES, THEMES, give_session, serious_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWER_WITH_MARKUP = 'Some **bold** text and <img src="http://example.com/x.png" onerror="window.pwned=1">.'


def test_a_temporary_chat_streams_its_answers_and_saves_nothing(signed_in: Page, fake_vllm):
    page = signed_in
    page.get_by_role("link", name="Temporary chat").click()
    expect(page.locator("#temporary-note")).to_contain_text("Not saved.")
    fake_vllm.reply, fake_vllm.token_delay = ["The", " sky", " is", " **blue**."], 0.05
    page.get_by_role("textbox", name="Message").fill("Why is the sky blue?")
    page.keyboard.press("Enter")
    answer = page.locator("#thread article.assistant").last
    expect(answer.locator("strong")).to_have_text("blue")  # rendered as markdown, as on the chat page
    expect(answer).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#thread article.user")).to_have_text("Why is the sky blue?")

    # The second prompt goes with the first turn, which the page kept.
    fake_vllm.reply = ["Rayleigh", " scattering."]
    page.get_by_role("textbox", name="Message").fill("What is that called?")
    page.keyboard.press("Enter")
    expect(page.locator("#thread article.assistant").last).to_have_text("Rayleigh scattering.")
    sent = fake_vllm.requests[-1]["messages"]
    assert sent[-3:] == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "The sky is **blue**."},
        {"role": "user", "content": "What is that called?"},
    ]
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_a_temporary_chats_refusal_is_said_by_the_prompt(signed_in: Page, fake_vllm):
    page = signed_in
    page.goto("/temporary/")
    page.get_by_role("textbox", name="Message").fill("x" * 20000)
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("alert")).to_contain_text("too long")
    assert not fake_vllm.requests


def test_a_shared_links_answers_are_rendered_safely_and_can_be_continued(signed_in: Page, alice, bob):
    conversation = Conversation.objects.create(owner=bob, title="Bob's plans")
    prompt = Message.objects.create(conversation=conversation, role="user", content="Show me markup")
    Message.objects.create(conversation=conversation, parent=prompt, role="assistant", content=ANSWER_WITH_MARKUP)
    link = sharing.share(conversation, SharedLink.Audience.SIGNED_IN)
    page = signed_in
    page.goto(f"/s/{link.token}/")
    body = page.locator("article.assistant .body")
    expect(body.locator("strong")).to_have_text("bold")
    assert body.locator("img").count() == 0  # shown as a link to follow by choice, never fetched
    assert page.evaluate("window.pwned") is None
    page.get_by_role("button", name="Continue in my chats").click()
    copy = Conversation.objects.get(owner=alice)
    expect(page).to_have_url(f"{page.url.split('/c/')[0]}/c/{copy.pk}/")
    expect(page.locator("#thread article.user .body")).to_have_text("Show me markup")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
def test_axe_finds_nothing_serious_on_the_new_pages(page: Page, live_site, alice, fake_vllm, theme, language):
    conversation = Conversation.objects.create(owner=alice, title="Shared plans")
    prompt = Message.objects.create(conversation=conversation, role="user", content="A question")
    Message.objects.create(conversation=conversation, parent=prompt, role="assistant", content="An `answer`.")
    link = sharing.share(conversation, SharedLink.Audience.ANYONE)
    page.emulate_media(color_scheme=theme)
    give_session(page.context, live_site.url, "alice")
    page.set_extra_http_headers({"Accept-Language": language})
    for path in [f"/s/{link.token}/", "/temporary/", "/account/links/"]:
        page.goto(path)
        expect(page.locator("html")).to_have_attribute("lang", language)
        assert serious_violations(page) == [], path
    # The temporary chat with an answer in it, and the conversation's menu with a link shared.
    fake_vllm.reply = ["An ", "answer."]
    page.goto("/temporary/")
    page.locator("#prompt").fill("Hi")
    page.keyboard.press("Enter")
    expect(page.locator("#thread article.assistant")).to_have_text("An answer.")
    assert serious_violations(page) == []
    page.goto(f"/c/{conversation.pk}/")
    page.locator(f"#conversation-{conversation.pk} summary").click()
    page.locator(f"#conversation-{conversation.pk} form.share select").select_option("anyone")
    page.locator(f"#conversation-{conversation.pk} form.share button[type=submit]").click()
    expect(page.locator(f"#conversation-{conversation.pk} .share-url")).to_have_value(
        f"{live_site.url}/s/{link.token}/"
    )
    assert serious_violations(page) == []
    # Signed out, the link for anyone.
    page.context.clear_cookies()
    page.goto(f"/s/{link.token}/")
    expect(page.locator("article.assistant code")).to_have_text("answer")
    assert serious_violations(page) == []


def test_sharing_and_revoking_from_the_conversations_menu(signed_in: Page, alice, live_site):
    conversation = Conversation.objects.create(owner=alice, title="Menu plans")
    Message.objects.create(conversation=conversation, role="user", content="A question")
    page = signed_in
    page.goto(f"/c/{conversation.pk}/")
    item = page.locator(f"#conversation-{conversation.pk}")
    item.locator("summary").click()
    item.get_by_label("Who may read a shared link").select_option("anyone")
    item.get_by_role("button", name="Share", exact=True).click()
    expect(item.locator(".share-url")).to_have_value(
        re.compile(rf"^{re.escape(live_site.url)}/s/[A-Za-z0-9_-]{{43}}/$")
    )
    link = SharedLink.objects.get()
    expect(item.locator(".share-url")).to_have_value(f"{live_site.url}/s/{link.token}/")
    assert link.audience == "anyone"
    item.get_by_role("button", name="Stop sharing").click()
    expect(item.get_by_role("status")).to_contain_text("Not shared")
    assert not SharedLink.objects.exists()


def test_a_file_dropped_on_the_temporary_chat_is_refused_not_opened_in_its_place(signed_in: Page, fake_vllm):
    page = signed_in
    page.goto("/temporary/")
    fake_vllm.reply = ["Kept", " here."]
    page.get_by_role("textbox", name="Message").fill("Remember this.")
    page.keyboard.press("Enter")
    expect(page.locator("#thread article.assistant")).to_have_text("Kept here.")

    # The browser opens a dropped file in place of the page unless the page cancels the drop (and
    # the dragover before it): a synthetic drop cannot navigate, so what is checked is the cancel.
    cancelled = page.locator("#thread").evaluate(
        """(thread) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File(["notes"], "notes.txt", { type: "text/plain" }));
            return ["dragenter", "dragover", "drop"].map((type) => {
                const event = new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true });
                thread.dispatchEvent(event);
                return event.defaultPrevented;
            });
        }"""
    )
    assert cancelled[1:] == [True, True]
    expect(page.get_by_role("alert")).to_contain_text("takes no files")
    expect(page.locator("#thread article.assistant")).to_have_text("Kept here.")
    assert page.url.endswith("/temporary/")
