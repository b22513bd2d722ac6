"""A person's first minutes, in Chromium, against the real vLLM serving the starter model: the
sign-in page makes the first account, the page says which model answers, a real answer streams
in, and it is still there after a reload."""

import re
from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Browser, Page, expect

from chat.models import Message
from tests.accounts import PASSWORD
from tests.site_server import SiteProcess

pytestmark = [pytest.mark.realvllm, pytest.mark.browser, pytest.mark.timeout(30 * 60)]


@pytest.fixture
def site(real_vllm, django_db_setup) -> Iterator[SiteProcess]:
    """The site in daphne, on the test database, talking to the real vLLM; told nothing of its model."""
    site = SiteProcess(
        {
            "DATABASE_URL": f"sqlite:///{django_settings.DATABASES['default']['NAME']}",
            "VLLM_BASE_URL": real_vllm.base_url,
            "VLLM_API_KEY": real_vllm.api_key,
            "VLLM_SERVED_MODEL_NAME": "",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        }
    ).start()
    yield site
    site.stop()


@pytest.fixture
def page(chromium: Browser, site: SiteProcess) -> Iterator[Page]:
    # Not the shared page (tests/fixtures_browser.py): this one is on the site that talks to the real vLLM.
    context = chromium.new_context(base_url=site.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


@pytest.mark.django_db(transaction=True)
def test_first_account_then_a_real_answer_streams_in_and_is_there_after_a_reload(page: Page, site: SiteProcess):
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if request.url.endswith("/stream") else None)

    # A new site: the sign-in page makes the first account.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(f"{site.url}/")
    # The URL changes before the page's deferred scripts have run: a key pressed sooner would reach
    # a page that does not handle it yet.
    page.wait_for_load_state("load")

    # The page says which model answers, and what the starter model is.
    expect(page.locator("#model .model-name")).to_have_text("SmolLM2-135M-Instruct (starter model)")
    expect(page.locator("#model .model-note")).to_contain_text("Qwen2-7B-Instruct")

    # A question, at the starter model's own temperature (greedy): the answer streams in and is right.
    box = page.get_by_role("textbox", name="Message")
    box.fill("What is the capital of France?")
    box.press("Enter")
    answer = page.locator("#thread article.assistant").first
    expect(answer).to_have_class(re.compile(r"\bcomplete\b"), timeout=120_000)
    expect(answer.locator(".body")).to_contain_text("Paris")
    assert streams, "the answer did not come over the stream"
    stored = Message.objects.get(role="assistant")
    assert stored.model_name == "smollm2-135m-instruct" and "Paris" in stored.content
    assert stored.conversation.temperature == 0  # what the page offered, untouched

    # And it is there after a reload.
    page.reload()
    expect(page.locator("#thread article.assistant .body")).to_have_text(stored.content)
