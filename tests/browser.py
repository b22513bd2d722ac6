"""The chat page as the browser tests find their way around it (Chromium and the signed-in page are
tests/fixtures_browser.py's fixtures)."""

import re
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Locator, Page, expect

from tests.accounts import PASSWORD

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


# The themes and languages (as the browser asks for them) each page is checked in by axe-core.
THEMES = ["light", "dark"]
LANGUAGES = ["en", "ko"]

# Where signing in leads: the chat page, at the site's root.
CHAT_PAGE = re.compile(r"^https?://[^/]+/$")


def serious_violations(page: Page) -> list[str]:
    """What axe-core finds on the page that is serious or critical for accessibility, a line each."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:5]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def sign_in(page: Page, username: str) -> None:
    """Open the chat page signed out, be sent to sign in, and come back to it signed in."""
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(CHAT_PAGE)
    # The URL changes before the page's deferred scripts have run: a key pressed sooner would reach
    # a page that does not handle it yet.
    page.wait_for_load_state("load")


def prompt_box(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message")


def answers(page: Page) -> Locator:
    return page.locator("#thread article.assistant")


def sidebar_item(page: Page, title: str) -> Locator:
    return page.locator("#conversations li").filter(has=page.get_by_role("link", name=title, exact=True))


def open_settings(page: Page) -> None:
    page.locator("#settings-panel > summary").click()


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)
