"""The chat page on any screen and by keyboard, in both themes, and checked by axe-core, in Chromium.

The site runs in daphne against the fake vLLM (tests/fixtures_browser.py). axe-core comes bundled with
axe-playwright-python (no network); it is run on each page in each theme and must find nothing
serious or critical.
"""

import re
import threading

import pytest
from playwright.sync_api import Browser, FilePayload, Page, ViewportSize, expect

from chat import titles
from chat.models import Conversation, Message
from tests.browser import LANGUAGES, THEMES, give_session, open_signed_in, serious_violations
from tests.fake_vllm import Instructed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE: ViewportSize = {"width": 375, "height": 740}
# The words the checks find their way by in each language the pages are checked in (LANGUAGES).
WORDS = {
    "en": {
        "username": "Username",
        "password": "Password",
        "sign in": "Sign in",
        "model server up": "model server up",
        "versions": "Versions",
        "system prompt": "System prompt",
        "conversations": "Conversations",
        "search": "Search conversations",
        "results": "Search results",
        "new title": "New title",
    },
    "ko": {
        "username": "사용자 이름",
        "password": "비밀번호",
        "sign in": "로그인",
        "model server up": "모델 서버 정상",
        "versions": "버전",
        "system prompt": "시스템 프롬프트",
        "conversations": "대화 목록",
        "search": "대화 검색",
        "results": "검색 결과",
        "new title": "새 제목",
    },
}
ANSWER = """Two options:

| Option | Cost |
| --- | --- |
| Local | Hardware |

```python
print("hello")
```

See [the docs](https://example.com/docs) and `inline code`."""


@pytest.fixture
def shown_conversation(alice) -> Conversation:
    conversation = Conversation.objects.create(owner=alice, title="Running models locally")
    prompt = Message.objects.create(conversation=conversation, role="user", content="How do I run a model locally?")
    # Two answers to the prompt (one regenerated): the answer shown has versions, and its figures.
    Message.objects.create(conversation=conversation, parent=prompt, role="assistant", content="Use vLLM.")
    answer = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role="assistant",
        content=ANSWER,
        model_name="Qwen/Qwen3-0.6B",
        time_to_first_token=0.25,
        prompt_tokens=20,
        completion_tokens=42,
    )
    conversation.branch_tip = answer
    conversation.save(update_fields=["branch_tip"])
    Conversation.objects.create(owner=alice, title="Another conversation")
    return conversation


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
def test_axe_finds_nothing_serious_on_the_sign_in_page(page: Page, live_site, alice, theme, language):
    words = WORDS[language]
    page.emulate_media(color_scheme=theme)
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto("/accounts/login/")
    expect(page.locator("html")).to_have_attribute("lang", language)
    assert serious_violations(page) == []
    # A failed sign-in shows its error: checked too.
    page.get_by_label(words["username"]).fill("alice")
    page.get_by_label(words["password"]).fill("not the password")
    page.get_by_role("button", name=words["sign in"]).click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert serious_violations(page) == []


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("viewport", [None, PHONE], ids=["wide", "phone"])
def test_axe_finds_nothing_serious_on_the_chat_page(
    page: Page, live_site, fake_vllm, shown_conversation, theme, language, viewport
):
    words = WORDS[language]
    page.emulate_media(color_scheme=theme)
    if viewport:
        page.set_viewport_size(viewport)
    give_session(page.context, live_site.url, "alice")
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto(f"/c/{shown_conversation.pk}/")
    expect(page.locator("html")).to_have_attribute("lang", language)
    expect(page.locator("#thread .code-block")).to_be_visible()  # the answer rendered as markdown
    expect(page.locator("#backend")).to_have_text(words["model server up"])
    expect(page.get_by_role("navigation", name=words["versions"])).to_contain_text("2 / 2")
    assert serious_violations(page) == []
    # With the settings panel open.
    page.locator("#settings-panel > summary").click()
    expect(page.get_by_label(words["system prompt"])).to_be_visible()
    assert serious_violations(page) == []
    # With search results in the sidebar (on a phone, in its menu).
    if viewport:
        page.get_by_role("button", name=words["conversations"]).click()
    page.get_by_role("searchbox", name=words["search"]).fill("locally")
    expect(page.get_by_role("list", name=words["results"]).get_by_role("link").first).to_be_in_viewport()
    assert serious_violations(page) == []
    page.get_by_role("searchbox", name=words["search"]).fill("")
    # With a conversation's actions menu open.
    page.locator("#conversations li.current summary").click()
    expect(page.get_by_role("textbox", name=words["new title"])).to_be_visible()
    assert serious_violations(page) == []


def background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


WHITE, DARK = "rgb(255, 255, 255)", "rgb(33, 33, 33)"


def test_the_theme_follows_the_system_until_the_person_chooses_one(page: Page, live_site, alice):
    page.emulate_media(color_scheme="dark")
    open_signed_in(page, live_site.url, "alice")
    switch = page.locator("[data-theme-switch]")
    expect(switch).to_have_text("Theme: system")
    assert background(page) == DARK
    page.emulate_media(color_scheme="light")
    assert background(page) == WHITE

    switch.click()
    expect(switch).to_have_text("Theme: light")
    page.emulate_media(color_scheme="dark")
    assert background(page) == WHITE  # chosen: the system's no longer counts

    switch.click()
    expect(switch).to_have_text("Theme: dark")
    page.emulate_media(color_scheme="light")
    assert background(page) == DARK

    # Remembered in this browser, and applied before the page is first drawn: theme.js sets the
    # attribute from <head>, so at the first script that runs after it the page is already dark.
    page.add_init_script("""document.addEventListener("readystatechange", () => {
        if (document.readyState === "interactive" && !window.firstTheme)
            window.firstTheme = document.documentElement.dataset.theme || "none";
    });""")
    page.reload()
    expect(switch).to_have_text("Theme: dark")
    assert background(page) == DARK
    assert page.evaluate("window.firstTheme") == "dark"
    page.goto("/accounts/password_change/")
    assert background(page) == DARK  # every page of the site

    page.goto("/")
    switch.click()
    expect(switch).to_have_text("Theme: system")
    assert background(page) == WHITE  # the (emulated) system's light again
    assert page.evaluate("localStorage.getItem('theme')") is None


def test_on_a_phone_the_chat_fills_the_screen_and_the_conversations_are_a_menu(
    chromium: Browser, live_site, fake_vllm, shown_conversation
):
    context = chromium.new_context(base_url=live_site.url, viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    try:
        give_session(context, live_site.url, "alice")
        page.goto(f"/c/{shown_conversation.pk}/")
        toggle = page.get_by_role("button", name="Conversations")
        sidebar = page.locator("#sidebar")
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(sidebar).not_to_be_in_viewport()
        expect(page.get_by_role("link", name="Another conversation")).not_to_be_visible()
        # The thread and the prompt box take the whole width.
        for part in ("#thread", ".composer"):
            box = page.locator(part).bounding_box()
            assert box and box["x"] < 16 and box["width"] > PHONE["width"] - 32, (part, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll

        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(page.get_by_role("link", name="Another conversation")).to_be_in_viewport()
        expect(page.get_by_role("link", name="+ New chat")).to_be_focused()
        page.keyboard.press("Escape")
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(toggle).to_be_focused()
        expect(page.get_by_role("link", name="Another conversation")).not_to_be_visible()

        # Opened again, a conversation in the menu opens it.
        toggle.click()
        page.get_by_role("link", name="Another conversation").click()
        expect(page).to_have_title(re.compile("^Another conversation"))
        expect(page.get_by_role("link", name="Another conversation")).not_to_be_visible()
    finally:
        context.close()


def test_esc_stops_the_answer_being_written(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.reply = [f" word{i}" for i in range(200)]
    # The answer waits after its tenth word: still being written when Esc is pressed, however busy the machine.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = 10
    expect(page.locator("#backend")).to_have_text("model server up")  # the page's scripts have run
    page.get_by_role("textbox", name="Message").fill("Write at length")
    page.keyboard.press("Enter")
    answer = page.locator("#thread article.assistant")
    expect(answer).to_have_class(re.compile(r"\bstreaming\b"))
    expect(answer.locator(".stop")).to_have_attribute("title", "Stop (Esc)")
    expect(answer.locator(".body")).to_contain_text("word3")

    page.keyboard.press("Escape")

    expect(answer.locator(".status")).to_have_text("Stopped")
    assert Message.objects.get(role="assistant").status == Message.Status.STOPPED


def test_ctrl_shift_o_starts_a_new_chat(signed_in: Page, live_site, shown_conversation):
    page = signed_in
    page.goto(f"/c/{shown_conversation.pk}/")
    expect(page.get_by_role("link", name="+ New chat")).to_have_attribute("title", re.compile(r"Ctrl\+Shift\+O"))
    page.get_by_role("textbox", name="Message").focus()  # even from the prompt box

    page.keyboard.press("Control+Shift+O")

    expect(page).to_have_url(f"{live_site.url}/")
    expect(page.locator("#thread .empty")).to_be_visible()


# Where the keyboard is: marks the element (to know when Tab has gone all the way round) and says
# whether its focus ring shows. The prompt box's ring is drawn by its composer (chat.css).
FOCUSED = """() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const seen = el.dataset.tabbed === "yes";
    el.dataset.tabbed = "yes";
    const style = getComputedStyle(el.id === "prompt" ? el.closest(".composer") : el);
    return {
        key: el.id || el.getAttribute("aria-label") || el.name || el.textContent.trim().slice(0, 40),
        seen,
        ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    };
}"""
# The page's controls a person can see and use; the tab walk must reach each one.
CONTROLS = """Array.from(document.querySelectorAll("a[href], button, input:not([type=hidden]), textarea, summary"))
    .filter((el) => el.checkVisibility({ visibilityProperty: true }) && !el.disabled)
    .map((el) => el.id || el.getAttribute("aria-label") || el.name || el.textContent.trim().slice(0, 40))"""


@pytest.mark.parametrize("theme", THEMES)
def test_every_control_is_reached_by_tab_with_a_visible_focus(signed_in: Page, shown_conversation, theme):
    page = signed_in
    page.emulate_media(color_scheme=theme)
    page.goto(f"/c/{shown_conversation.pk}/")
    expect(page.locator("#thread .code-block")).to_be_visible()
    controls = set(page.evaluate(CONTROLS))

    rings: dict[str, bool] = {}
    for _ in range(100):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused is None:
            continue  # between the page's last control and its first
        if focused["seen"]:
            break
        rings[focused["key"]] = focused["ring"]

    assert controls - set(rings) == set()
    assert [key for key, ring in rings.items() if not ring] == []


def test_the_sidebar_shows_the_models_name_for_a_new_conversation_without_a_reload(signed_in: Page, fake_vllm):
    page = signed_in
    # The name is held until the page has shown the first words: with a fixed delay, a busy run's
    # polling saw the name already (issue 20's hog runs).
    named = threading.Event()
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Sky", " colours", " explained"], gate=named)
    expect(page.locator("#backend")).to_have_text("model server up")  # the page's scripts have run
    page.get_by_role("textbox", name="Message").fill("Why is the sky blue? And why are sunsets red?")
    page.keyboard.press("Enter")

    current = page.locator("#conversations li.current > a")
    expect(current).to_have_text("Why is the sky blue? And why are sunsets red?")  # the first words, at once
    expect(page.locator("#thread article.assistant .status")).to_have_text("")  # complete
    named.set()
    expect(current).to_have_text("Sky colours explained")
    expect(page).to_have_title("Sky colours explained · Local chat")
    conversation = Conversation.objects.get()
    assert (conversation.title, conversation.title_set_by_person) == ("Sky colours explained", False)
    assert len(fake_vllm.instructed_requests) == 1


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("path", ["/accounts/password_change/", "/account/tokens/"])
def test_axe_finds_nothing_serious_on_a_persons_own_pages(page: Page, live_site, alice, theme, language, path):
    page.emulate_media(color_scheme=theme)
    give_session(page.context, live_site.url, "alice")
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto(path)
    expect(page.locator("html")).to_have_attribute("lang", language)
    assert serious_violations(page) == []


def attach_file(page: Page, name: str, mime: str, data: bytes) -> None:
    with page.expect_file_chooser() as chooser:
        page.locator("#prompt-form .attach").click()
    chooser.value.set_files(FilePayload(name=name, mimeType=mime, buffer=data))


# A long paste's event, as the browser fires it (the offer it brings needs no text in the box).
LONG_PASTE = """(box) => {
    const transfer = new DataTransfer();
    transfer.setData("text/plain", "a line\\n".repeat(50));
    box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
}"""


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
def test_axe_finds_nothing_serious_with_files_in_the_prompt_and_the_thread(
    page: Page, live_site, fake_vllm, alice, theme, language
):
    # Files (issue 21): a sent prompt's file in the thread, a chip attached and one refused, the
    # offer a long paste brings, the too-long choice in the settings, and the drop hint.
    page.emulate_media(color_scheme=theme)
    give_session(page.context, live_site.url, "alice")
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", language)
    chips = page.locator("#prompt-form .attachments li")
    attach_file(page, "notes.txt", "text/plain", b"The launch is on Thursday.\n")
    expect(chips.locator("input[name=files]")).to_have_count(1)
    page.locator("#prompt").fill("When is the launch?")
    page.locator("#prompt").press("Enter")
    expect(page.locator("#thread article.assistant .body")).to_have_text("".join(fake_vllm.reply))
    expect(page.locator("#thread .prompt-files a")).to_have_text("notes.txt")

    attach_file(page, "plan.md", "text/markdown", b"# Plan\n")
    expect(chips.locator("input[name=files]")).to_have_count(1)
    refusal = {"error": "A refusal, for the check."}
    page.route("**/files", lambda route: route.fulfill(status=415, json=refusal), times=1)
    attach_file(page, "photo.heic", "image/heic", b"\0" * 64)
    expect(chips.get_by_role("alert")).to_have_text(refusal["error"])
    page.locator("#prompt").evaluate(LONG_PASTE)
    expect(page.locator("#prompt-form .paste-offer button").first).to_be_visible()
    page.locator("#settings-panel > summary").click()
    expect(page.locator("#file-choice input[type=radio]").first).to_be_visible()
    assert serious_violations(page) == []

    transfer = page.evaluate_handle(
        "() => { const t = new DataTransfer(); t.items.add(new File(['x'], 'x.txt')); return t; }"
    )
    page.locator("#thread").dispatch_event("dragover", {"dataTransfer": transfer})
    expect(page.locator(".drop-hint")).to_be_visible()
    assert serious_violations(page) == []
