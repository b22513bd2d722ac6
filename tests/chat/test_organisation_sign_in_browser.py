"""Signing in with the organisation's account in Chromium, as a person does, and the sign-in page
with its button and with a refusal checked by axe-core (tests/chat/test_screens.py checks the page
without a provider)."""

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.accounts import PASSWORD
from tests.browser import CHAT_PAGE, serious_violations

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_faults", "administrator"),
]

BUTTON = {"en": "Sign in with Example Org", "ko": "Example Org(으)로 로그인"}
EXPIRED = {
    "en": "The sign-in had expired before it reached this site.",
    "ko": "로그인이 이 사이트에 도착하기 전에 만료됐어요.",
}


@pytest.fixture
def site_page(chromium: Browser, open_site) -> Iterator[Page]:
    context = chromium.new_context(base_url=open_site.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    faults: list[str] = []
    page.on("pageerror", lambda error: faults.append(str(error)))
    # The test provider's page is not the site's (it has no favicon, say): only the site's faults count.
    page.on(
        "console",
        lambda message: (
            faults.append(message.text)
            if message.type == "error" and message.location.get("url", "").startswith(open_site.url)
            else None
        ),
    )
    yield page
    context.close()
    assert faults == []


def test_a_person_signs_in_with_the_organisations_account(site_page: Page, provider, open_site):
    provider.person("mallory", email="mallory@example.org")
    site_page.goto("/")
    site_page.get_by_role("link", name="Sign in with Example Org").click()
    # The provider's own sign-in page, then back to the chat page, signed in.
    expect(site_page).to_have_url(re.compile(rf"^{re.escape(provider.url)}/login/"))
    site_page.get_by_label("Username").fill("mallory")
    site_page.get_by_label("Password").fill(PASSWORD)
    site_page.get_by_role("button", name="Sign in").click()
    expect(site_page).to_have_url(CHAT_PAGE)
    assert site_page.url == f"{open_site.url}/"


@pytest.mark.parametrize("language", ["en", "ko"])
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_axe_finds_nothing_serious_on_the_sign_in_page_with_the_organisation(
    site_page: Page, provider, theme, language
):
    site_page.emulate_media(color_scheme=theme)
    site_page.set_extra_http_headers({"Accept-Language": language})
    site_page.goto("/accounts/login/")
    expect(site_page.get_by_role("link", name=BUTTON[language])).to_be_visible()
    assert serious_violations(site_page) == []
    # A refused sign-in says why on the same page: checked too.
    provider.person("niaj")
    provider.faults(expired=True)
    site_page.get_by_role("link", name=BUTTON[language]).click()
    site_page.get_by_label("Username").fill("niaj")
    site_page.get_by_label("Password").fill(PASSWORD)
    site_page.get_by_role("button", name="Sign in").click()
    expect(site_page.get_by_role("status")).to_contain_text(EXPIRED[language])
    assert serious_violations(site_page) == []
