"""The chat page as the browser tests find their way around it (Chromium and the signed-in page are
tests/fixtures_browser.py's fixtures)."""

import re
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import BrowserContext, Locator, Page, Route, expect

from tests.accounts import PASSWORD
from tests.waiting import wait_for

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
    """Open the chat page signed out, be sent to sign in, and come back to it signed in: the form, as
    a person signs in (most tests are handed a session instead: `open_signed_in`)."""
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(CHAT_PAGE)
    # The URL changes before the page's deferred scripts have run: a key pressed sooner would reach
    # a page that does not handle it yet.
    page.wait_for_load_state("load")


def give_session(context: BrowserContext, site_url: str, username: str) -> None:
    """Sign the browser in without the form: a session made on the test database (which the site
    reads its sessions from), as signing in makes one, handed to the browser as its cookie.

    For the many tests whose subject comes after signing in: `sign_in` loads three pages (the chat
    page's redirect, the form, the chat page again), this none. CPU measured in Chromium, the site
    and the tests, for a new browser context signed in: 1.4 s through the form to the chat page,
    1.1 s to it with `open_signed_in`, 0.2 s with this alone (a test that goes on to another page;
    the empty context costs as much). The tests of signing in itself, and a few ordinary ones, go
    through the form.
    """
    client = Client()
    # The backend the form signs in through (axes' own, listed first, only refuses).
    client.force_login(
        get_user_model().objects.get(username=username), backend="django.contrib.auth.backends.ModelBackend"
    )
    context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": site_url,
                "httpOnly": settings.SESSION_COOKIE_HTTPONLY,
                "sameSite": "Lax",  # Django's SESSION_COOKIE_SAMESITE
            }
        ]
    )


def open_signed_in(page: Page, site_url: str, username: str) -> None:
    """Open the chat page signed in, without the form (`give_session`)."""
    give_session(page.context, site_url, username)
    # `goto` returns once the page's "load" has fired: its deferred scripts have run.
    page.goto("/")
    expect(page).to_have_url(CHAT_PAGE)


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


def held_request(page: Page, held: list[Route], what: str = "the request to be held") -> Route:
    """The request a `page.route(..., held.append)` handler holds, once it has come.

    Sync Playwright runs a route's handler only while the test is inside one of its calls: right
    after the press that sends it, the handler may not have run yet (on a busy machine it had not,
    and `held` was empty). So the wait polls through Playwright.
    """

    def come() -> list[Route]:
        page.wait_for_timeout(0)  # a Playwright call, which lets its events in
        return held

    wait_for(come, what=what)
    return held.pop()
