"""The chat page in a real headless Chromium, used as a person uses it, against the live site.

The site runs in its own daphne process on the test database (`live_site`) and answers from the
fake vLLM on loopback (`fake_vllm`); Chromium and the page come from tests/fixtures_browser.py. Every
check waits on a condition through Playwright's auto-waiting expectations; none sleeps.
"""

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from playwright.sync_api import Browser, Page, Route, expect

from chat.models import Conversation, Message
from tests.browser import (
    answers,
    held_request,
    open_settings,
    open_signed_in,
    prompt_box,
    screenshot,
    sidebar_item,
    sign_in,
)
from tests.site_server import SiteProcess, site_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_conversation_streams_stops_and_is_found_again(page: Page, alice, fake_vllm, live_site, requested_urls):
    # Through the sign-in form, as a person comes to the page (the other tests are handed a session:
    # tests/browser.py's `open_signed_in`); the form's own failures are tests/chat/test_sign_in.py's.
    sign_in(page, "alice")
    expect(page.locator("#backend")).to_have_text("model server up")
    expect(page.locator("#backend")).to_have_class(re.compile(r"\bup\b"))

    # Shift+Enter is a new line, not a send.
    box = prompt_box(page)
    expect(box).to_be_focused()
    box.type("Why run a model locally?")
    box.press("Shift+Enter")
    box.type("Keep it short.")
    expect(box).to_have_value("Why run a model locally?\nKeep it short.")
    expect(page.locator("#thread article")).to_have_count(0)
    assert fake_vllm.requests == []

    # Enter sends; the answer grows a few words at a time.
    fake_vllm.reply = ["Streaming", " answers", " arrive", " one", " token", " at", " a", " time", " and", " end."]
    fake_vllm.token_delay = 0.2
    # The last token waits until the page has been seen mid-answer, however busy the machine.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 1
    box.press("Enter")
    answer = answers(page).first
    expect(page.locator("#thread article.user .body")).to_have_text("Why run a model locally?\nKeep it short.")
    expect(box).to_have_value("")
    # Some of the answer and not yet all of it (only the last token has a full stop).
    expect(answer.locator(".body")).to_have_text(re.compile(r"^Streaming answers[^.]*$"))
    expect(answer.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    fake_vllm.delta_gate.set()
    expect(answer.locator(".body")).to_have_text("Streaming answers arrive one token at a time and end.")
    expect(answer.locator(".usage")).to_have_text("10 tokens")
    expect(answer.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()

    # The new conversation has its own address and is listed, current, in the sidebar.
    conversation = Conversation.objects.get()
    expect(page).to_have_url(f"{live_site.url}/c/{conversation.pk}/")
    listed = sidebar_item(page, "Why run a model locally? Keep it short.")
    expect(listed).to_have_class(re.compile(r"\bcurrent\b"))
    expect(page).to_have_title(re.compile(r"^Why run a model locally\?"))
    # The list came with the answer to the send: the conversation's page was not loaded again.
    assert f"{live_site.url}/c/{conversation.pk}/" not in requested_urls
    screenshot(page, "chat-answered")

    # Back is the new chat page as it now is; forward the conversation again.
    page.go_back()
    expect(page).to_have_url(f"{live_site.url}/")
    expect(page.locator("#thread .empty")).to_be_visible()
    expect(sidebar_item(page, "Why run a model locally? Keep it short.")).not_to_have_class(re.compile(r"\bcurrent\b"))
    page.go_forward()
    expect(page).to_have_url(f"{live_site.url}/c/{conversation.pk}/")
    expect(answers(page).locator(".body")).to_have_text("Streaming answers arrive one token at a time and end.")

    # A long, slow answer, stopped halfway: the partial text stays, marked as stopped.
    fake_vllm.reply = [f" word{i}" for i in range(400)]
    fake_vllm.token_delay = 0.03
    box.fill("Now talk forever")
    page.get_by_role("button", name="Send").click()
    second = answers(page).nth(1)
    expect(second.locator(".body")).to_contain_text("word5")
    screenshot(page, "chat-streaming")
    # One prompt at a time: Enter does not send while an answer is still coming.
    box.fill("Too soon")
    box.press("Enter")
    second.get_by_role("button", name="Stop").click()
    expect(second.locator(".status")).to_have_text("Stopped")
    expect(second.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert fake_vllm.wait_for_disconnect()
    expect(box).to_have_value("Too soon")
    expect(page.locator("#thread article.user")).to_have_count(2)
    assert len([url for url in requested_urls if url.endswith("/send")]) == 2
    # As rendered markdown: a paragraph, without the answer's leading space.
    partial = (second.locator(".body").text_content() or "").strip()
    full = "".join(fake_vllm.reply).strip()
    assert partial and len(partial) < len(full) and full.startswith(partial)
    screenshot(page, "chat-stopped")

    # Both answers were saved: found again after a reload, as they ended.
    page.reload()
    expect(answers(page)).to_have_count(2)
    expect(answers(page).first.locator(".body")).to_have_text("Streaming answers arrive one token at a time and end.")
    expect(answers(page).first.locator(".status")).to_have_text("")
    expect(answers(page).nth(1).locator(".body")).to_have_text(partial)
    expect(answers(page).nth(1).locator(".status")).to_have_text("Stopped")
    assert [m.status for m in Message.objects.filter(role="assistant").order_by("pk")] == ["complete", "stopped"]

    # The recorder saw the page's own traffic (the fixture checks it all stayed on the site).
    assert any(re.search(r"/c/\d+/m/\d+/stream$", url) for url in requested_urls)
    assert f"{live_site.url}/healthz" in requested_urls


def test_a_stop_pressed_while_the_text_moves_it_still_stops_the_answer(signed_in: Page, fake_vllm):
    """A click is a press and a release on the same element. Text that wraps another line between
    the two moved Stop from under the pointer: the release landed on the text, and the Stop was lost
    (a person's press lasts a tenth of a second; a busy machine's, as Playwright's, can last longer)."""
    page = signed_in
    fake_vllm.reply = [f" word{i}" for i in range(400)]
    fake_vllm.token_delay = 0.01
    fake_vllm.delta_gate = threading.Event()  # no text yet: Stop stays where it is to be pressed
    sent_before = fake_vllm.generated_tokens
    prompt_box(page).fill("Talk for a while")
    prompt_box(page).press("Enter")
    answer = answers(page).last
    answer.get_by_role("button", name="Stop").hover()
    page.mouse.down()
    # Lines of text come while Stop is pressed, and the page has a frame to show them in.
    fake_vllm.delta_gate.set()
    assert fake_vllm.wait_for(lambda: fake_vllm.generated_tokens >= sent_before + 100)
    fake_vllm.delta_gate.clear()
    page.evaluate("() => new Promise((shown) => requestAnimationFrame(() => requestAnimationFrame(shown)))")
    page.mouse.up()
    expect(answer.locator(".status")).to_have_text("Stopped")
    fake_vllm.delta_gate.set()
    assert fake_vllm.wait_for_disconnect()
    # The text held while Stop was pressed is shown with the rest.
    expect(answer.locator(".body")).to_contain_text("word99")


def test_html_in_model_output_is_shown_as_text(signed_in: Page, fake_vllm, dialogs):
    page = signed_in
    fake_vllm.reply = ["Try ", "<img src=x onerror=alert(1)>", " and <b>bold</b>", "<script>alert(2)</script>"]
    prompt_box(page).fill("Show me <i>HTML</i>")
    prompt_box(page).press("Enter")

    shown = "Try <img src=x onerror=alert(1)> and <b>bold</b><script>alert(2)</script>"
    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
        expect(answers(page).locator(".body"), moment).to_have_text(shown)
        expect(answers(page).locator(".status"), moment).to_have_text("")
        expect(page.locator("#thread article.user .body"), moment).to_have_text("Show me <i>HTML</i>")
        expect(page.locator("#thread img, #thread b, #thread i, #thread script"), moment).to_have_count(0)
    assert dialogs == []


def test_a_vllm_error_shows_where_the_answer_would_be(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.fault = "server_error"
    prompt_box(page).fill("Break please")
    prompt_box(page).press("Enter")

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
        answer = answers(page)
        expect(answer.get_by_role("alert"), moment).to_contain_text("The model server failed (500)")
        expect(answer.locator(".status"), moment).to_have_text("Error")
        expect(answer.locator(".body"), moment).to_be_hidden()
        expect(page.get_by_role("button", name="Send"), moment).to_be_enabled()
        screenshot(page, f"chat-error-{moment}")
    assert Message.objects.get(role="assistant").status == Message.Status.ERROR


def test_the_backend_indicator_shows_a_model_server_that_is_down(signed_in: Page, fake_vllm):
    fake_vllm.fault = "refuse"
    signed_in.reload()
    expect(signed_in.locator("#backend")).to_have_text("model server down")
    expect(signed_in.locator("#backend")).to_have_class(re.compile(r"\bdown\b"))


def test_an_empty_or_too_long_prompt_shows_the_form_error_and_creates_nothing(signed_in: Page, fake_vllm, live_site):
    page = signed_in
    error = page.locator("#prompt-form").get_by_role("alert")
    expect(error).to_be_hidden()

    prompt_box(page).press("Enter")
    expect(error).to_have_text("Type a message first.")

    prompt_box(page).fill("   \n  ")
    page.get_by_role("button", name="Send").click()
    expect(error).to_have_text("Type a message first.")

    limit = django_settings.CHAT_MAX_PROMPT_CHARS
    prompt_box(page).fill("x" * (limit + 1))
    prompt_box(page).press("Enter")
    expect(error).to_have_text(f"This message is too long: at most {limit} characters (it has {limit + 1}).")
    # The prompt is kept for the person to shorten, not cut or lost.
    expect(prompt_box(page)).to_have_value("x" * (limit + 1))

    expect(page).to_have_url(f"{live_site.url}/")
    expect(page.locator("#thread article")).to_have_count(0)
    expect(page.locator("#conversations li")).to_have_count(0)
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()
    assert fake_vllm.requests == []

    # A good prompt afterwards clears the error.
    prompt_box(page).fill("Hello")
    prompt_box(page).press("Enter")
    expect(answers(page).locator(".body")).to_have_text("".join(fake_vllm.reply))
    expect(error).to_be_hidden()


def test_a_send_while_the_previous_is_on_its_way_goes_once_that_one_is_answered(signed_in: Page, fake_vllm):
    # The site's answer to a send is held until the next has been pressed: on a busy machine (or a
    # slow network) a person can be that quick.
    page = signed_in
    form, error = page.locator("#prompt-form"), page.locator("#prompt-form").get_by_role("alert")
    held: list[Route] = []

    def held_until_the_next_enter() -> None:
        page.route("**/send", lambda route: held.append(route), times=1)
        prompt_box(page).press("Enter")
        expect(form).to_have_class(re.compile(r"\bhtmx-request\b"))

    held_until_the_next_enter()  # an empty prompt, refused
    limit = django_settings.CHAT_MAX_PROMPT_CHARS
    prompt_box(page).fill("x" * (limit + 1))
    prompt_box(page).press("Enter")
    held_request(page, held).continue_()
    # The second send went once the first was answered, with the box as it was then: refused too.
    expect(error).to_have_text(f"This message is too long: at most {limit} characters (it has {limit + 1}).")

    # A double Enter sends once: the first starts an answer, and the second waits for nothing.
    prompt_box(page).fill("Hello")
    held_until_the_next_enter()
    prompt_box(page).press("Enter")
    held_request(page, held).continue_()
    expect(answers(page).locator(".body")).to_have_text("".join(fake_vllm.reply))
    expect(error).to_be_hidden()
    assert len(fake_vllm.requests) == 1
    assert Message.objects.count() == 2


def test_the_settings_go_with_the_prompt_and_stay_for_the_next(signed_in: Page, fake_vllm):
    page = signed_in
    open_settings(page)
    page.get_by_label("Temperature").fill("0.3")
    expect(page.locator("#settings output")).to_have_text("0.3")
    page.get_by_label("Top p").fill("0.5")
    page.get_by_label("Max tokens").fill("64")
    prompt_box(page).fill("Hello")
    prompt_box(page).press("Enter")
    expect(answers(page).locator(".body")).to_have_text("".join(fake_vllm.reply))
    sent = fake_vllm.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.5, 64)

    # The form the site sent back shows the conversation's settings, ready for the next prompt.
    expect(page.get_by_label("Temperature")).to_have_value("0.3")
    expect(page.get_by_label("Top p")).to_have_value("0.5")
    expect(page.get_by_label("Max tokens")).to_have_value("64")
    expect(prompt_box(page)).to_be_focused()
    prompt_box(page).fill("Again")
    prompt_box(page).press("Enter")
    expect(answers(page)).to_have_count(2)
    expect(answers(page).nth(1).locator(".body")).to_have_text("".join(fake_vllm.reply))
    assert Conversation.objects.get().messages.count() == 4
    assert fake_vllm.requests[-1]["top_p"] == 0.5


def test_a_prompt_after_the_session_ended_says_so(signed_in: Page, fake_vllm):
    page = signed_in
    page.context.clear_cookies(name="sessionid")
    prompt_box(page).fill("Anyone there?")
    prompt_box(page).press("Enter")
    expect(page.locator("#prompt-form").get_by_role("alert")).to_have_text(
        "You were signed out. Reload the page to sign in again."
    )
    # The sign-in page the site answered with is not put into the chat.
    expect(page.get_by_label("Username")).to_have_count(0)
    expect(page.locator("#thread .empty")).to_be_visible()
    expect(prompt_box(page)).to_have_value("Anyone there?")
    assert not Message.objects.exists()


@pytest.fixture
def debug_site(django_db_setup, fake_vllm_server) -> Iterator[SiteProcess]:
    site = SiteProcess(site_env(fake_vllm_server, DJANGO_DEBUG="true")).start()
    yield site
    site.stop()


def test_with_debug_on_a_form_error_is_still_said_beside_the_form(chromium: Browser, debug_site, alice):
    # In DEBUG, django-htmx's script shows an htmx request's 400 as the whole page (for Django's
    # error pages); the page's own 400s are form errors, and stay beside their form.
    context = chromium.new_context(base_url=debug_site.url)
    try:
        page = context.new_page()
        open_signed_in(page, debug_site.url, "alice")
        prompt_box(page).press("Enter")
        expect(page.locator("#prompt-form").get_by_role("alert")).to_have_text("Type a message first.")
        expect(prompt_box(page)).to_be_visible()
    finally:
        context.close()


def test_rename_and_delete_from_the_sidebar(signed_in: Page, alice, live_site, dialogs):
    page = signed_in
    trip = Conversation.objects.create(owner=alice, title="Trip to Lisbon")
    Message.objects.create(conversation=trip, role="user", content="Where should I stay?")
    taxes = Conversation.objects.create(owner=alice, title="Tax questions")
    page.goto(f"/c/{trip.pk}/")
    expect(sidebar_item(page, "Trip to Lisbon")).to_have_class(re.compile(r"\bcurrent\b"))

    # Rename the other conversation: a blank title is refused, saying why.
    item = sidebar_item(page, "Tax questions")
    item.get_by_label("Actions for Tax questions").click()
    item.get_by_label("New title").fill("   ")
    item.get_by_role("button", name="Rename").click()
    expect(item.get_by_role("alert")).to_have_text("A title cannot be empty.")
    screenshot(page, "sidebar-actions")
    # A good one changes in place, and the renamed conversation does not become the current one.
    item.get_by_label("New title").fill("Taxes for 2025")
    item.get_by_role("button", name="Rename").click()
    renamed = sidebar_item(page, "Taxes for 2025")
    expect(renamed).to_be_visible()
    # htmx keeps the old attributes on swapped-in content until it settles.
    expect(page.locator("#conversations .htmx-added")).to_have_count(0)
    expect(renamed).not_to_have_class(re.compile(r"\bcurrent\b"))
    expect(sidebar_item(page, "Trip to Lisbon")).to_have_class(re.compile(r"\bcurrent\b"))
    taxes.refresh_from_db()
    assert taxes.title == "Taxes for 2025"

    # Delete the open conversation, once the confirmation is accepted.
    page.once("dialog", lambda dialog: dialog.accept())
    item = sidebar_item(page, "Trip to Lisbon")
    item.get_by_label("Actions for Trip to Lisbon").click()
    item.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{live_site.url}/")
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(sidebar_item(page, "Taxes for 2025")).to_be_visible()
    assert dialogs == ["Delete “Trip to Lisbon” and all its messages?"]
    assert list(Conversation.objects.values_list("title", flat=True)) == ["Taxes for 2025"]
    assert not Message.objects.exists()


def test_the_sign_in_page_rejects_a_wrong_password(page: Page, alice, live_site):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Your username and password didn't match. Please try again.")
    expect(page.get_by_label("Username")).to_have_value("alice")
    expect(page.get_by_label("Password")).to_be_focused()
    screenshot(page, "sign-in")


def test_a_prompt_over_the_persons_limits_is_refused_with_a_message_and_kept(chromium: Browser, alice, fake_vllm):
    # A site of its own: the tests' site has no limits on answers.
    site = SiteProcess(site_env(fake_vllm, CHAT_MAX_ANSWERS_AT_ONCE="1")).start()
    context = chromium.new_context(base_url=site.url)
    try:
        page = context.new_page()
        open_signed_in(page, site.url, "alice")
        # An answer of hers is being generated (in another tab, or by another door).
        elsewhere = Conversation.objects.create(owner=alice, title="Elsewhere")
        Message.objects.create(
            conversation=elsewhere,
            role="assistant",
            status=Message.Status.STREAMING,
            worker="another-worker",
            lease_until=timezone.now() + timedelta(hours=1),
        )

        prompt_box(page).fill("Hello")
        prompt_box(page).press("Enter")

        expect(page.locator("#prompt-form").get_by_role("alert")).to_have_text(
            "You already have 1 answer being generated, the most at once. "
            "Send this when one of them has finished (or stop one)."
        )
        expect(prompt_box(page)).to_have_value("Hello")
        assert Message.objects.count() == 1
        assert fake_vllm.requests == []
    finally:
        context.close()
        site.stop()


def test_search_from_the_sidebar_opens_the_conversation_at_the_message(signed_in: Page, alice, bob, live_site):
    page = signed_in
    trip = Conversation.objects.create(owner=alice, title="Trip notes")
    found = Message.objects.create(conversation=trip, role="user", content="전세계를 여행하고 싶어요: <b>어디</b>부터?")
    last = found
    for n in range(30):  # enough after it that the conversation's end is a screen away
        text = f"Paragraph {n} of a long answer.\n" * 3
        last = Message.objects.create(conversation=trip, parent=last, role="assistant", content=text)
    Message.objects.create(
        conversation=Conversation.objects.create(owner=bob, title="세계"), role="user", content="세계"
    )
    page.reload()
    conversations = page.locator("#conversations")
    expect(conversations).to_be_visible()

    box = page.get_by_role("searchbox", name="Search conversations")
    box.press_sequentially("세계", delay=50)
    results = page.get_by_role("list", name="Search results")
    expect(results.get_by_role("link")).to_have_count(1)  # Bob's never shows
    result = results.get_by_role("link")
    expect(result).to_contain_text("Trip notes")
    expect(result.locator("mark")).to_have_text("세계")
    expect(result).to_contain_text("You: 전세계를 여행하고 싶어요: <b>어디</b>부터?")  # as text, not markup
    expect(conversations).to_be_hidden()  # the results take the list's place
    screenshot(page, "search-results")

    result.click()
    expect(page).to_have_url(f"{live_site.url}/c/{trip.pk}/?message={found.pk}#message-{found.pk}")
    expect(page.locator(f"#message-{found.pk}")).to_be_in_viewport()
    expect(answers(page).last).not_to_be_in_viewport()

    # Nothing to find says so; clearing the box brings the conversation list back.
    box = page.get_by_role("searchbox", name="Search conversations")
    box.fill("우주여행")
    expect(page.locator("#search-results")).to_have_text("Nothing found for “우주여행”.")
    box.fill("")
    expect(page.locator("#conversations")).to_be_visible()
    expect(page.locator("#search-results")).to_have_text("")


def test_export_a_conversation_and_import_chatgpts_export_from_the_page(signed_in: Page, alice, live_site, tmp_path):
    page = signed_in
    chat = Conversation.objects.create(owner=alice, title="세계 여행")
    Message.objects.create(conversation=chat, role="user", content="Where first?")
    page.goto(f"/c/{chat.pk}/")
    item = sidebar_item(page, "세계 여행")
    item.get_by_label("Actions for 세계 여행").click()
    with page.expect_download() as download:
        item.get_by_role("link", name="Markdown").click()
    assert download.value.suggested_filename == f"세계-여행-{chat.pk}.md"
    assert "## You\n\nWhere first?" in Path(download.value.path()).read_text()

    chatgpt = tmp_path / "conversations.json"
    chatgpt.write_text(
        json.dumps(
            [
                {
                    "title": "From ChatGPT",
                    "create_time": 1700000000.0,
                    "current_node": "a",
                    "mapping": {
                        "root": {"message": None, "parent": None, "children": ["q"]},
                        "q": {
                            "message": {
                                "author": {"role": "user"},
                                "content": {"content_type": "text", "parts": ["Hi"]},
                            },
                            "parent": "root",
                        },
                        "a": {
                            "message": {
                                "author": {"role": "assistant"},
                                "content": {"content_type": "text", "parts": ["Hello!"]},
                            },
                            "parent": "q",
                        },
                    },
                }
            ]
        )
    )
    page.get_by_role("link", name="Import", exact=True).click()
    page.get_by_label("File").set_input_files(chatgpt)
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("status")).to_contain_text("Imported 1 conversation with 2 messages")
    screenshot(page, "import-report")
    page.get_by_role("link", name="From ChatGPT").click()
    expect(page.locator("#thread article .body")).to_have_text(["Hi", "Hello!"])
