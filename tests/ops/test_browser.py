"""A person's account pages and the operator's view in a real headless Chromium, on the live site:
they work under the site's Content-Security-Policy, and fetch nothing from elsewhere."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from chat.models import ApiToken, Conversation
from tests.accounts import PASSWORD
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.ops.answers import store_answers

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    # As in tests/chat/test_browser.py: the lifted async check lets the tests use the ORM while
    # Playwright's loop is marked running in this thread; a module scope ends both in time.
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser, live_site) -> Iterator[Page]:
    context = chromium.new_context(base_url=live_site.url, viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = context.new_page()
    faults: list[str] = []  # script errors, and whatever the Content-Security-Policy blocked
    page.on("pageerror", lambda error: faults.append(str(error)))
    page.on("console", lambda message: faults.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert [url for url in requested if not url.startswith(f"{live_site.url}/")] == []
    assert faults == []


def sign_in(page: Page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("textbox", name="Message")).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_a_token_is_made_from_the_page_shown_once_and_revoked(page: Page, alice, fake_vllm):
    sign_in(page, "alice")
    screenshot(page, "account-links")
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()

    page.get_by_label("Name").fill("laptop CLI")
    page.get_by_role("button", name="Create token").click()

    secret = page.get_by_label("The new token's secret")
    expect(secret).to_have_value(re.compile(r"^cs_"))
    assert ApiToken.objects.user_for(secret.input_value()) == alice
    expect(page.get_by_role("row").filter(has_text="laptop CLI")).to_contain_text("never")
    screenshot(page, "account-tokens")

    page.get_by_role("button", name="Revoke laptop CLI").click()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    expect(page.get_by_label("The new token's secret")).to_have_count(0)
    assert not ApiToken.objects.exists()


def test_the_operator_sees_charts_and_the_model_server_live(page: Page, django_user_model, alice, fake_vllm):
    django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    store_answers(
        Conversation.objects.create(owner=alice),
        [{"completion_tokens": 30, "time_to_first_token": 0.3, "duration": 1.3}] * 4,
        days_ago=2,
    )
    fake_vllm.waiting, fake_vllm.kv_cache_usage = 2, 0.5
    sign_in(page, "operator")

    page.get_by_role("link", name="Operator").click()

    expect(page.get_by_role("heading", name="Operator's view")).to_be_visible()
    expect(page.get_by_role("img", name="Answers per day, by person")).to_be_visible()
    expect(page.get_by_role("img", name="Time to first token per day")).to_be_visible()
    # The live part comes through htmx, which the policy allows: the site's own script.
    live = page.locator("#live")
    expect(live.locator(".gauges")).to_contain_text("up")
    expect(live.locator(".gauges")).to_contain_text("50.0%")
    expect(live.get_by_role("img", name="KV-cache use")).to_be_visible()
    screenshot(page, "operators-view")
