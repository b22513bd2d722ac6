"""The model picker in a real Chromium, on a live site with two engines (the default fake vLLM, and
one given in VLLM_ENGINES): pick a model, reload, the choice holds, and each answer's footer names
the model that wrote it."""

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from chat.models import Conversation
from chat.titles import NAMING_INSTRUCTION
from tests.browser import answers, prompt_box
from tests.fake_vllm import FakeVLLM, Instructed
from tests.site_server import SiteProcess, site_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def small_server() -> Iterator[FakeVLLM]:
    with FakeVLLM(served_model_name="smol-a", root="/models/Smol-A") as fake:
        yield fake


@pytest.fixture(scope="module")
def live_site(django_db_setup, django_db_blocker, fake_vllm_server, small_server):
    """The site with a second engine (overrides the session's `live_site`)."""
    engines = [{"name": "small", "base_url": small_server.base_url}]
    site = SiteProcess(site_env(fake_vllm_server, VLLM_ENGINES=json.dumps(engines))).start()
    yield site
    site.stop()


@pytest.fixture
def small(small_server) -> FakeVLLM:
    small_server.reset()
    small_server.instructed[NAMING_INSTRUCTION] = Instructed([], status=503)
    return small_server


def test_a_model_picked_holds_and_each_answer_names_its_model(signed_in: Page, fake_vllm, small):
    page = signed_in
    picker = page.get_by_label("Model")
    expect(picker).to_have_value("qwen2-7b-instruct")  # the default model, for a first chat

    # A new chat: the choice goes with its first prompt.
    picker.select_option("smol-a")
    small.reply = ["Small", " answer."]
    prompt_box(page).fill("Hello small")
    prompt_box(page).press("Enter")
    expect(answers(page).first.locator(".body")).to_have_text("Small answer.")
    expect(answers(page).first.locator(".model")).to_have_text("smol-a")
    conversation = Conversation.objects.get()
    assert conversation.model == "smol-a"

    page.reload()
    expect(page.get_by_label("Model")).to_have_value("smol-a")
    expect(answers(page).first.locator(".model")).to_have_text("smol-a")

    # Changed in the conversation: saved at once, and it holds.
    page.get_by_label("Model").select_option("qwen2-7b-instruct")
    expect(page.locator("#model-choice .saved")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Model")).to_have_value("qwen2-7b-instruct")

    fake_vllm.reply = ["Default", " answer."]
    prompt_box(page).fill("Hello default")
    prompt_box(page).press("Enter")
    expect(answers(page).nth(1).locator(".body")).to_have_text("Default answer.")
    expect(answers(page).nth(1).locator(".model")).to_have_text("qwen2-7b-instruct")
    expect(answers(page).first.locator(".model")).to_have_text("smol-a")
    assert (len(small.requests), len(fake_vllm.requests)) == (1, 1)

    # A new chat starts with the person's last choice.
    page.get_by_label("Model").select_option("smol-a")
    expect(page.locator("#model-choice .saved")).to_be_visible()
    page.goto("/")
    expect(page.get_by_label("Model")).to_have_value("smol-a")
