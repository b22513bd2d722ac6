"""Korean typed with an IME into the prompt box, in Chromium: Enter that ends a syllable's
composition never sends, and the next Enter sends the whole text once.

Chromium composes as an IME would when told through the DevTools protocol: Input.imeSetComposition
shows a syllable being composed (compositionstart, isComposing on keys), Input.insertText commits it
(compositionend). Safari's order, where the composition ends before the Enter's keydown and that
keydown says nothing of composing, is played with the events themselves, in one turn of the page's
event loop, as Safari fires them.
"""

import pytest
from playwright.sync_api import CDPSession, Page, expect

from chat.models import Message
from tests.browser import prompt_box

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The page takes an Enter this soon after a composition ended for the key that ended it (chat.js's
# SAME_KEY_MS); a person's next Enter comes later than this.
NEXT_KEY_MS = 300


def compose(ime: CDPSession, syllable: str) -> None:
    ime.send(
        "Input.imeSetComposition", {"text": syllable, "selectionStart": len(syllable), "selectionEnd": len(syllable)}
    )


def commit(ime: CDPSession, syllable: str) -> None:
    ime.send("Input.insertText", {"text": syllable})


def ime_enter(ime: CDPSession, key_code: int) -> None:
    """An Enter that the IME takes: a key down and up with no character of its own (an IME's Enter
    ends the composition, it types no new line). Chromium marks its keydown isComposing while a
    syllable is composed."""
    key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code}
    ime.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **key})
    ime.send("Input.dispatchKeyEvent", {"type": "keyUp", **key})


def type_korean(page: Page, ime: CDPSession, syllables: str) -> None:
    """Each syllable composed, then committed, as a Korean IME does; the last one left composing."""
    for syllable in syllables[:-1]:
        compose(ime, syllable)
        commit(ime, syllable)
    compose(ime, syllables[-1])


def prompts_stored() -> list[str]:
    return list(Message.objects.filter(role="user").order_by("pk").values_list("content", flat=True))


def sent_once(page: Page, text: str) -> None:
    """The page shows `text` sent, and the box is empty, ready for the next prompt."""
    expect(page.locator("#thread article.user")).to_have_count(1)
    expect(page.locator("#thread article.user .body")).to_have_text(text)
    expect(page.locator("#thread article.assistant:not(.streaming)")).to_have_count(1)
    expect(prompt_box(page)).to_have_value("")
    assert prompts_stored() == [text]


def test_enter_while_a_syllable_is_composed_does_not_send_and_the_next_enter_sends_it_all_once(
    signed_in: Page, fake_vllm
):
    page = signed_in
    box = prompt_box(page)
    box.focus()
    ime = page.context.new_cdp_session(page)
    type_korean(page, ime, "안녕하세요")
    expect(box).to_have_value("안녕하세요")  # "요" still being composed

    # Chromium's order: the Enter's keydown comes while the syllable is composed (isComposing), then
    # the IME commits it.
    ime_enter(ime, 13)
    commit(ime, "요")
    expect(box).to_have_value("안녕하세요")
    page.wait_for_timeout(NEXT_KEY_MS)
    assert page.locator("#thread article").count() == 0
    assert prompts_stored() == []

    # The person's next Enter sends the whole text, once; nothing is left behind in the box.
    box.press("Enter")
    sent_once(page, "안녕하세요")
    assert fake_vllm.requests[-1]["messages"][-1] == {"role": "user", "content": "안녕하세요"}


def safaris_enter(page: Page, syllable: str) -> bool:
    """Safari's Enter that ends a composition: the syllable committed (compositionend), then a
    keydown that says nothing of composing, in the same turn. Whether the page took the keydown."""
    return page.evaluate(
        """(syllable) => {
          const box = document.getElementById("prompt");
          box.dispatchEvent(new CompositionEvent("compositionend", { data: syllable, bubbles: true }));
          const enter = new KeyboardEvent(
            "keydown", { key: "Enter", code: "Enter", keyCode: 13, bubbles: true, cancelable: true });
          box.dispatchEvent(enter);
          return enter.defaultPrevented;
        }""",
        syllable,
    )


def test_safaris_order_compositionend_before_a_plain_enter_keydown_does_not_send(signed_in: Page, fake_vllm):
    page = signed_in
    box = prompt_box(page)
    box.focus()
    ime = page.context.new_cdp_session(page)
    type_korean(page, ime, "안녕하세요")
    keydown_was_taken = safaris_enter(page, "요")
    commit(ime, "요")  # Chromium's own composition, ended as Safari's was
    # The page kept that Enter from writing a new line, and sent nothing.
    assert keydown_was_taken
    expect(box).to_have_value("안녕하세요")
    page.wait_for_timeout(NEXT_KEY_MS)
    assert page.locator("#thread article").count() == 0
    assert prompts_stored() == []

    box.press("Enter")
    sent_once(page, "안녕하세요")


def test_a_keydown_the_ime_owns_keycode_229_never_sends(signed_in: Page, fake_vllm):
    page = signed_in
    box = prompt_box(page)
    box.fill("안녕")
    # Some browsers (Safari among them) mark the IME's keys only by keyCode 229, with no composition
    # the page was told of.
    ime_enter(page.context.new_cdp_session(page), 229)
    page.wait_for_timeout(NEXT_KEY_MS)
    assert page.locator("#thread article").count() == 0
    box.press("Enter")
    sent_once(page, "안녕")


def test_the_temporary_chat_takes_safaris_order_as_the_chat_page_does(signed_in: Page, fake_vllm):
    page = signed_in
    page.goto("/temporary/")
    box = page.get_by_role("textbox", name="Message")
    box.focus()
    ime = page.context.new_cdp_session(page)
    type_korean(page, ime, "안녕하세요")
    keydown_was_taken = safaris_enter(page, "요")
    commit(ime, "요")
    assert keydown_was_taken
    expect(box).to_have_value("안녕하세요")
    page.wait_for_timeout(NEXT_KEY_MS)
    assert page.locator("#thread article").count() == 0 and fake_vllm.requests == []

    box.press("Enter")
    expect(page.locator("#thread article.user")).to_have_text("안녕하세요")
    expect(page.locator("#thread article.assistant")).not_to_have_attribute("aria-busy", "true")
    assert fake_vllm.requests[-1]["messages"][-1] == {"role": "user", "content": "안녕하세요"}
