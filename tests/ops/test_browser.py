"""A person's account pages and the operator's view in a real headless Chromium, on the live site:
they work under the site's Content-Security-Policy, and fetch nothing from elsewhere."""

import re

import pytest
from playwright.sync_api import Page, expect

from chat.models import ApiToken, Conversation
from tests.accounts import PASSWORD
from tests.browser import open_signed_in, screenshot
from tests.ops.answers import store_answers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_token_is_made_from_the_page_shown_once_and_revoked(page: Page, live_site, alice, fake_vllm):
    open_signed_in(page, live_site.url, "alice")
    screenshot(page, "account-links", full_page=True)
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()

    page.get_by_label("Name").fill("laptop CLI")
    page.get_by_role("button", name="Create token").click()

    secret = page.get_by_label("The new token's secret")
    expect(secret).to_have_value(re.compile(r"^cs_"))
    assert ApiToken.objects.user_for(secret.input_value()) == alice
    expect(page.get_by_role("row").filter(has_text="laptop CLI")).to_contain_text("never")
    screenshot(page, "account-tokens", full_page=True)

    page.get_by_role("button", name="Revoke laptop CLI").click()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    expect(page.get_by_label("The new token's secret")).to_have_count(0)
    assert not ApiToken.objects.exists()


def test_the_operator_sees_charts_and_the_model_server_live(page: Page, live_site, django_user_model, alice, fake_vllm):
    django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    store_answers(
        Conversation.objects.create(owner=alice),
        [{"completion_tokens": 30, "time_to_first_token": 0.3, "duration": 1.3}] * 4,
        days_ago=2,
    )
    fake_vllm.waiting, fake_vllm.kv_cache_usage = 2, 0.5
    open_signed_in(page, live_site.url, "operator")

    page.get_by_role("link", name="Operator").click()

    expect(page.get_by_role("heading", name="Operator's view")).to_be_visible()
    expect(page.get_by_role("img", name="Answers per day, by person")).to_be_visible()
    expect(page.get_by_role("img", name="Time to first token per day")).to_be_visible()
    # The live part comes through htmx, which the policy allows: the site's own script.
    live = page.locator("#live")
    expect(live.locator(".gauges")).to_contain_text("up")
    expect(live.locator(".gauges")).to_contain_text("50.0%")
    expect(live.get_by_role("img", name="KV-cache use")).to_be_visible()
    screenshot(page, "operators-view", full_page=True)
