"""Files in a prompt on the chat page (issue 21), in a real Chromium against the live site.

A file comes by the paperclip, by a drop onto the chat (a real DataTransfer) or by a paste; it
uploads at once and shows as a chip above the box; the prompt takes it to the model (the fake vLLM
echoes what it was sent, so the answer shows what the model read); the thread shows it as a link,
live and after a reload. Every file is made here. Every check waits on a condition; none sleeps.
"""

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, FilePayload, Locator, Page, Route, expect

from chat.models import Attachment, Message
from tests.browser import answers, held_request, open_settings, open_signed_in, prompt_box, screenshot
from tests.site_server import SiteProcess, site_env
from tests.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTES = "Minutes of the planning meeting.\nThe launch moves to Thursday 14 May, in room 4B.\n"
FIGURES = "quarter,revenue\nQ1,120\nQ2,135\n"


def text_file(name: str, text: str, mime: str = "text/plain") -> FilePayload:
    return {"name": name, "mimeType": mime, "buffer": text.encode()}


def chips(page: Page) -> Locator:
    return page.get_by_role("list", name="Files to send with the message").get_by_role("listitem")


def attach_button(page: Page) -> Locator:
    return page.get_by_role("button", name="Attach files")


def choose(page: Page, *files: FilePayload) -> None:
    with page.expect_file_chooser() as chooser:
        attach_button(page).click()
    chooser.value.set_files(list(files))


def drop(page: Page, target: Locator, name: str, text: str, mime: str) -> None:
    """Drag a file made in the page over `target` and drop it, as a person's file manager would."""
    transfer = page.evaluate_handle(
        """([name, text, mime]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, { type: mime }));
            return transfer;
        }""",
        [name, text, mime],
    )
    target.dispatch_event("dragenter", {"dataTransfer": transfer})
    target.dispatch_event("dragover", {"dataTransfer": transfer})
    expect(page.locator(".drop-hint")).to_be_visible()
    screenshot(page, "files-drop-hint")
    target.dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator(".drop-hint")).to_be_hidden()


# A copied file pasted into the box (a page cannot put a file on the system clipboard; the paste
# event is the one the browser would fire, with the file in its clipboardData).
PASTE_FILE = """(box, [name, text, mime]) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], name, { type: mime }));
    box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
}"""


def paste_file(page: Page, name: str, text: str, mime: str) -> None:
    prompt_box(page).evaluate(PASTE_FILE, [name, text, mime])


def attachments_sent(fake_vllm: Any) -> str:
    """What the model was sent for the last turn, all its messages' text."""
    return json.dumps(fake_vllm.requests[-1]["messages"], ensure_ascii=False)


def test_a_file_attached_by_the_button_is_read_by_the_model_and_kept_with_the_prompt(
    signed_in: Page, fake_vllm, live_site
):
    page = signed_in
    fake_vllm.echo = True
    # Chromium intercepts file choosers only once asked to, which Playwright does without waiting
    # for an answer: asked this early, it has been done by the time Enter opens one.
    page.on("filechooser", lambda chooser: None)
    # By keyboard: the paperclip is just before the box.
    prompt_box(page).press("Shift+Tab")
    expect(attach_button(page)).to_be_focused()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files([text_file("notes.txt", NOTES)])

    chip = chips(page).filter(has_text="notes.txt")
    expect(chip).to_contain_text(f"{len(NOTES.encode())} bytes")
    expect(chip.get_by_role("button", name="Remove notes.txt")).to_be_visible()
    expect(prompt_box(page)).to_be_focused()
    attachment = wait_for(lambda: Attachment.objects.filter(name="notes.txt").first(), what="the upload stored")
    assert attachment.message is None
    screenshot(page, "files-chip")

    prompt_box(page).fill("When is the launch?")
    prompt_box(page).press("Enter")
    # The model read the file: the echo shows it in the answer.
    expect(answers(page).locator(".body")).to_contain_text("The launch moves to Thursday 14 May, in room 4B.")
    expect(answers(page).locator(".body")).to_contain_text("When is the launch?")
    assert "room 4B" in attachments_sent(fake_vllm)
    # The chips went with the form the prompt was sent from.
    expect(chips(page)).to_have_count(0)

    prompt = Message.objects.get(role="user")
    attachment.refresh_from_db()
    assert attachment.message_id == prompt.pk
    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
        link = page.locator("#thread article.user .prompt-files").get_by_role("link", name="notes.txt")
        expect(link, moment).to_have_attribute("href", f"/files/{attachment.pk}/")
    expect(chips(page)).to_have_count(0)  # a sent file is no longer waiting to be sent
    screenshot(page, "files-in-the-thread")
    with page.expect_download() as download:
        page.locator("#thread .prompt-files").get_by_role("link", name="notes.txt").click()
    assert download.value.suggested_filename == "notes.txt"
    assert open(download.value.path(), encoding="utf-8").read() == NOTES


def test_a_dropped_file_becomes_a_chip_that_can_be_removed(signed_in: Page, fake_vllm, alice):
    page = signed_in
    drop(page, page.locator("#thread"), "figures.csv", FIGURES, "text/csv")
    chip = chips(page).filter(has_text="figures.csv")
    expect(chip).to_be_visible()
    expect(chip.locator("input[name=files]")).to_have_count(1)
    attachment = wait_for(lambda: Attachment.objects.filter(name="figures.csv").first(), what="the upload stored")

    # Not yet sent, it is still shown after a reload: nothing goes with a prompt unseen. A file of
    # hers uploaded by another door (the API, say) is not this tab's to offer.
    Attachment.objects.create(
        owner=alice, name="from-a-script.txt", size=5, content_type="text/plain", kind="text", text="hello"
    )
    page.reload()
    page.wait_for_load_state("load")
    expect(chip).to_be_visible()
    expect(chips(page)).to_have_count(1)

    # Removed by keyboard: the file is gone at the site too, and the keyboard is back in the box.
    chip.get_by_role("button", name="Remove figures.csv").focus()
    page.keyboard.press("Enter")
    expect(chips(page)).to_have_count(0)
    wait_for(lambda: not Attachment.objects.filter(pk=attachment.pk).exists(), what="the file deleted")
    expect(prompt_box(page)).to_be_focused()

    prompt_box(page).fill("Hello")
    prompt_box(page).press("Enter")
    expect(answers(page).locator(".body")).to_have_text("".join(fake_vllm.reply))
    assert "quarter,revenue" not in attachments_sent(fake_vllm)


def test_a_pasted_file_is_attached_and_a_long_paste_is_offered_as_one(signed_in: Page, fake_vllm, live_site):
    page = signed_in
    fake_vllm.echo = True
    paste_file(page, "plan.md", "# Plan\n\nShip the *beta* first.\n", "text/markdown")
    expect(chips(page).filter(has_text="plan.md")).to_be_visible()
    expect(prompt_box(page)).to_have_value("")  # the file, not its name as text

    # A long paste, through the real clipboard: it goes into the box, and a file is offered instead.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    # More than 40 lines (under 2,000 characters, and short enough for the echo to fit max tokens).
    log = "".join(f"{i:02d} worker {i % 4} took {i}ms\n" for i in range(60))
    page.evaluate("text => navigator.clipboard.writeText(text)", log)
    prompt_box(page).fill("Summarise this: ")
    prompt_box(page).press("End")
    prompt_box(page).press("Control+V")
    expect(prompt_box(page)).to_have_value("Summarise this: " + log)
    offer = page.locator("#prompt-form .paste-offer")
    expect(offer).to_contain_text(f"You pasted {len(log):,} characters on 61 lines.")
    screenshot(page, "files-long-paste-offer")
    offer.get_by_role("button", name="Attach as a file").click()
    expect(offer.get_by_role("button", name="Attach as a file")).to_be_hidden()
    expect(prompt_box(page)).to_have_value("Summarise this: ")
    expect(chips(page).filter(has_text="pasted.txt")).to_be_visible()
    expect(chips(page)).to_have_count(2)
    expect(chips(page).locator("input[name=files]")).to_have_count(2)

    prompt_box(page).press("Enter")
    expect(answers(page).locator(".body")).to_contain_text("59 worker 3 took 59ms")
    expect(answers(page).locator(".body")).to_contain_text("Ship the")
    expect(page.locator("#thread .prompt-files").get_by_role("link")).to_have_text(["plan.md", "pasted.txt"])

    # Kept in the box when the person says so: the offer goes, the text stays.
    page.evaluate("text => navigator.clipboard.writeText(text)", log)
    prompt_box(page).press("Control+V")
    expect(offer).to_contain_text("You pasted")
    offer.get_by_role("button", name="Keep it in the box").click()
    expect(offer.get_by_role("button", name="Keep it in the box")).to_be_hidden()
    expect(prompt_box(page)).to_have_value(log)
    expect(chips(page)).to_have_count(0)

    # Cells copied from a spreadsheet come with a picture of them: pasted as the text, not attached.
    # (The paste handler runs within evaluate: a chip would be there when it returns.)
    prompt_box(page).evaluate(SPREADSHEET_PASTE)
    expect(chips(page)).to_have_count(0)


SPREADSHEET_PASTE = """(box) => {
    const transfer = new DataTransfer();
    transfer.setData("text/plain", "Q1\\t120\\nQ2\\t135");
    transfer.items.add(new File([new Uint8Array([137, 80, 78, 71])], "image.png", { type: "image/png" }));
    box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
}"""


def test_a_send_while_a_file_uploads_waits_for_it_and_says_so(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.echo = True
    held: list[Route] = []
    page.route("**/files", lambda route: held.append(route), times=1)
    choose(page, text_file("notes.txt", NOTES))
    chip = chips(page).filter(has_text="notes.txt")
    expect(chip.get_by_role("progressbar", name="Uploading notes.txt")).to_be_visible()
    upload = held_request(page, held, what="the upload to be held")

    prompt_box(page).fill("When is the launch?")
    prompt_box(page).press("Enter")
    expect(page.locator("#prompt-form .attach-note")).to_have_text("Sending once the files have uploaded…")
    expect(page.locator("#thread article")).to_have_count(0)
    assert fake_vllm.requests == []

    upload.continue_()
    expect(answers(page).locator(".body")).to_contain_text("The launch moves to Thursday 14 May")
    expect(page.locator("#thread .prompt-files").get_by_role("link", name="notes.txt")).to_be_visible()
    expect(page.locator("#prompt-form .attach-note")).to_be_hidden()


@pytest.fixture
def small_files_site(django_db_setup, fake_vllm_server) -> Iterator[SiteProcess]:
    # A site of its own, whose largest file is 1 KB.
    site = SiteProcess(site_env(fake_vllm_server, CHAT_FILE_MAX_BYTES="1024")).start()
    yield site
    site.stop()


def test_a_refused_file_says_why_at_its_chip_and_holds_the_send(
    chromium: Browser, small_files_site, alice, fake_vllm, dialogs
):
    context = chromium.new_context(base_url=small_files_site.url)
    try:
        page = context.new_page()
        open_signed_in(page, small_files_site.url, "alice")
        with page.expect_response(re.compile(r"/files$")) as refused:
            choose(page, text_file("big.log", "x" * 2048))
        assert refused.value.status == 413
        sentence = refused.value.json()["error"]
        assert sentence
        chip = chips(page).filter(has_text="big.log")
        # The site's own sentence, at the chip, as an alert: no dialog.
        expect(chip.get_by_role("alert")).to_have_text(sentence)
        screenshot(page, "files-refused")
        expect(chip.locator("input[name=files]")).to_have_count(0)
        assert dialogs == []
        assert not Attachment.objects.exists()

        # Not sent without the file the person meant the model to read: they remove it first.
        prompt_box(page).fill("What does the log say?")
        prompt_box(page).press("Enter")
        expect(page.locator("#prompt-form .attach-note")).to_have_text(
            "A file could not be attached: remove it to send without it."
        )
        expect(page.locator("#thread article")).to_have_count(0)
        chip.get_by_role("button", name="Remove big.log").click()
        expect(chips(page)).to_have_count(0)
        prompt_box(page).press("Enter")
        expect(answers(page).locator(".body")).to_have_text("".join(fake_vllm.reply))
    finally:
        context.close()


def test_a_pdf_with_no_text_layer_is_refused_with_the_sites_sentence(signed_in: Page):
    pypdf = pytest.importorskip("pypdf")
    import io

    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=595, height=842)  # a scan's page: an image, or here nothing, but no text
    pdf = io.BytesIO()
    writer.write(pdf)
    page = signed_in
    with page.expect_response(re.compile(r"/files$")) as refused:
        choose(page, {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": pdf.getvalue()})
    assert refused.value.status == 400
    expect(chips(page).filter(has_text="scan.pdf").get_by_role("alert")).to_have_text(refused.value.json()["error"])
    assert not Attachment.objects.exists()


def test_the_choice_for_a_file_too_long_is_saved_for_the_person(signed_in: Page, alice):
    from chat.attachment_models import FileChoice

    page = signed_in
    open_settings(page)
    choice = page.get_by_role("group", name="When an attached file is too long for the model")
    expect(choice.get_by_role("radio", name="Send the part that fits, and say which part")).to_be_checked()
    choice.get_by_role("radio", name="Do not send the prompt").check()
    expect(page.locator("#file-choice").get_by_role("status")).to_have_text("Saved for all your chats.")
    assert FileChoice.objects.get(person=alice).when_too_long == "refuse"
    page.reload()
    open_settings(page)
    expect(choice.get_by_role("radio", name="Do not send the prompt")).to_be_checked()


def test_a_file_named_like_html_is_shown_as_text(signed_in: Page, fake_vllm, dialogs):
    page = signed_in
    name = '<img src=x onerror="window.pwned=1">.txt'
    paste_file(page, name, NOTES, "text/plain")
    expect(chips(page)).to_have_count(1)
    expect(chips(page).locator("input[name=files]")).to_have_count(1)
    shown = chips(page).locator(".file-name").text_content() or ""
    assert "img" in shown  # the site may clean the name, but it is text
    prompt_box(page).fill("Read it")
    prompt_box(page).press("Enter")
    expect(page.locator("#thread .prompt-files").get_by_role("link")).to_have_text(shown)
    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
        expect(page.locator("#thread .prompt-files li"), moment).to_have_count(1)
        expect(page.locator("#thread img, #prompt-form img"), moment).to_have_count(0)
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
