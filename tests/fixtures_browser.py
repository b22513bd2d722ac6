"""Chromium and the chat page, for the tests that use the site as a person does; registered from
tests/conftest.py.

The site runs in its own daphne process on the test database (`live_site`) and answers from the
fake vLLM on loopback (`fake_vllm`).
"""

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from tests.browser import open_signed_in
from tests.chromium import CHROMIUM, CHROMIUM_ARGS

# Playwright's expectations wait up to 5 s by default; on a busy 2-core machine (CI runs the site,
# the fake vLLM and Chromium side by side) a page can take longer than that to settle. A longer
# wait costs nothing when the condition holds sooner.
expect.set_options(timeout=20_000)

# How Chromium and htmx log an error status the page got.
ERROR_STATUS_LOGGED = re.compile(r"Failed to load resource: the server responded with|Response Status Error Code")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One Chromium for a module's tests.

    Playwright's sync API marks its own event loop as running in this thread between its calls.
    While it lives, Django would refuse the tests' (truly synchronous) ORM calls as "async
    unsafe", and pytest-asyncio could not run a loop of its own: hence the lifted check, and a
    module scope rather than a session one, so that both end before other modules' tests run.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium-headless-shell)")
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def requested_urls() -> list[str]:
    """Every URL the page asked for, in order."""
    return []


@pytest.fixture
def error_statuses_shown() -> bool:
    """Whether the page may log an error status it got: true where the tests provoke them and check
    that the page says so (tests/chat/conftest.py); elsewhere a logged error status is a fault."""
    return False


@pytest.fixture
def page(chromium: Browser, live_site, requested_urls: list[str], error_statuses_shown: bool) -> Iterator[Page]:
    context = chromium.new_context(base_url=live_site.url, viewport={"width": 1280, "height": 800})
    context.on("request", lambda request: requested_urls.append(request.url))
    page = context.new_page()
    # Script errors, and whatever the Content-Security-Policy blocked.
    faults: list[str] = []
    page.on("pageerror", lambda error: faults.append(str(error)))
    page.on("console", lambda message: faults.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    # A private chat: nothing the page loads or sends may go anywhere but the site itself.
    assert [url for url in requested_urls if not url.startswith(f"{live_site.url}/")] == []
    if error_statuses_shown:
        faults = [fault for fault in faults if not ERROR_STATUS_LOGGED.match(fault)]
    assert faults == []


@pytest.fixture
def signed_in(page: Page, live_site, alice) -> Page:
    """The chat page, Alice signed in (without the form: tests/browser.py's `open_signed_in`)."""
    open_signed_in(page, live_site.url, "alice")
    return page


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    """Messages of the dialogs the page opened. Alerts are dismissed; a test answers its confirms."""
    opened: list[str] = []

    def record(dialog: Dialog) -> None:
        opened.append(dialog.message)
        if dialog.type == "alert":
            dialog.dismiss()

    page.on("dialog", record)
    return opened
