"""The chat page as the browser tests find their way around it (Chromium and the signed-in page are
tests/chat/conftest.py's fixtures)."""

from pathlib import Path

from playwright.sync_api import Locator, Page

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def prompt_box(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message")


def answers(page: Page) -> Locator:
    return page.locator("#thread article.assistant")


def sidebar_item(page: Page, title: str) -> Locator:
    return page.locator("#conversations li").filter(has=page.get_by_role("link", name=title, exact=True))


def open_settings(page: Page) -> None:
    page.locator("#settings-panel > summary").click()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png")
