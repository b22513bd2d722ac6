"""Feedback on answers in Chromium: the thumbs and comment under an answer, kept across a reload, and
the operator's view of them, both checked by axe-core in English and Korean."""

import re

import pytest
from playwright.sync_api import Page, expect

from chat.models import Conversation, Feedback, Message
from tests.accounts import PASSWORD
from tests.browser import give_session, serious_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_thumb_with_a_comment_is_saved_and_shown_after_a_reload(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.reply = ["Use ", "vLLM."]
    page.get_by_role("textbox", name="Message").fill("How do I run a model?")
    page.get_by_role("textbox", name="Message").press("Enter")
    answer = page.locator("#thread article.assistant").last
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    expect(answer).not_to_have_class(re.compile(r"\bending\b"))  # its footer is the site's: the swap is done
    feedback = answer.get_by_role("group", name="Your feedback on this answer")
    feedback.get_by_role("textbox", name="Comment (optional), sent with a thumb").fill("Short & <b>right</b>")
    feedback.get_by_role("button", name="Good answer").click()
    feedback = answer.get_by_role("group", name="Your feedback on this answer")
    expect(feedback.get_by_role("status")).to_have_text("Thanks: saved.")
    expect(feedback.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    assert serious_violations(page) == []
    given = Feedback.objects.get()
    assert (given.rating, given.comment) == (Feedback.Rating.UP, "Short & <b>right</b>")

    page.reload()
    feedback = page.locator("#thread article.assistant").last.get_by_role("group", name="Your feedback on this answer")
    expect(feedback.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    expect(feedback.get_by_role("button", name="Poor answer")).to_have_attribute("aria-pressed", "false")
    expect(feedback.get_by_role("textbox")).to_have_value("Short & <b>right</b>")
    # Changed: still one.
    feedback.get_by_role("button", name="Poor answer").click()
    expect(page.locator("#thread article.assistant").last.get_by_role("button", name="Poor answer")).to_have_attribute(
        "aria-pressed", "true"
    )
    assert Feedback.objects.get().rating == Feedback.Rating.DOWN


@pytest.mark.parametrize("language", ["en", "ko"])
def test_axe_finds_nothing_serious_on_the_operators_feedback_page(
    page: Page, live_site, alice, django_user_model, language
):
    conversation = Conversation.objects.create(owner=alice, title="Plans")
    prompt = Message.objects.create(conversation=conversation, role="user", content="Plan?")
    answer = Message.objects.create(
        conversation=conversation, parent=prompt, role="assistant", content="Yes.", model_name="qwen"
    )
    Feedback.objects.create(message=answer, person=alice, rating=Feedback.Rating.UP, comment="Helpful")
    django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    give_session(page.context, live_site.url, "operator")
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto("/ops/feedback")
    expect(page.locator("html")).to_have_attribute("lang", language)
    expect(page.locator(".feedback-comments")).to_contain_text("Helpful")
    expect(page.locator(".feedback-rates td.number").last).to_have_text("100%")
    assert serious_violations(page) == []
