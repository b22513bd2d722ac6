"""Pins, folders, the archive and presets in a real Chromium, used as a person uses them, against
the live site (tests/fixtures_browser.py), and each new page and state checked by axe-core.
Every check waits on a condition through Playwright's expectations; none sleeps."""

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from chat.models import Conversation, Folder, Preset
from tests.browser import LANGUAGES, THEMES, give_session, open_signed_in, prompt_box, serious_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def item(page: Page, conversation: Conversation) -> Locator:
    return page.locator(f"#conversation-{conversation.pk}")


def open_menu(page: Page, conversation: Conversation) -> Locator:
    item(page, conversation).locator("summary").first.click()
    return item(page, conversation).locator(".menu")


@pytest.fixture
def two_chats(alice) -> tuple[Conversation, Conversation]:
    older = Conversation.objects.create(owner=alice, title="Trip to Busan")
    newer = Conversation.objects.create(owner=alice, title="Tax return")
    return older, newer


def test_a_conversation_is_pinned_and_unpinned_from_its_menu(page: Page, live_site, alice, two_chats):
    older, _newer = two_chats
    open_signed_in(page, live_site.url, "alice")
    expect(page.locator("#conversations > li")).to_have_count(2)
    open_menu(page, older).get_by_role("button", name="Pin").click()
    expect(page.locator("#shelves ul.pinned").locator(f"#conversation-{older.pk}")).to_be_visible()
    expect(page.locator("#conversations > li")).to_have_count(1)
    page.reload()
    expect(page.locator("#shelves ul.pinned > li")).to_have_count(1)
    open_menu(page, older).get_by_role("button", name="Unpin").click()
    expect(page.locator("#shelves ul.pinned")).to_have_count(0)
    expect(page.locator("#conversations > li")).to_have_count(2)
    assert not Conversation.objects.get(pk=older.pk).pinned


def test_a_folder_is_made_and_a_conversation_moved_into_it_from_its_menu(page: Page, live_site, alice, two_chats):
    older, _newer = two_chats
    open_signed_in(page, live_site.url, "alice")
    page.get_by_role("textbox", name="New folder's name").fill("Travel")
    page.get_by_role("button", name="Add").click()
    folder = page.locator("#shelves li.folder").filter(has_text="Travel")
    expect(folder).to_be_visible()
    menu = open_menu(page, older)
    menu.get_by_role("combobox", name="Folder").select_option(label="Travel")
    menu.get_by_role("button", name="Move").click()
    expect(item(page, older)).to_have_count(0)  # out of the list; the folder is closed
    folder.locator("summary").first.click()
    expect(folder.locator(f"#conversation-{older.pk}")).to_be_visible()
    assert Conversation.objects.get(pk=older.pk).folder == Folder.objects.get(name="Travel")
    # Its menu knows where it is, and takes it out again.
    menu = open_menu(page, older)
    expect(menu.get_by_role("combobox", name="Folder")).to_have_value(str(Folder.objects.get().pk))
    menu.get_by_role("combobox", name="Folder").select_option(label="No folder")
    menu.get_by_role("button", name="Move").click()
    expect(page.locator("#conversations").locator(f"#conversation-{older.pk}")).to_be_visible()


def test_a_conversation_dragged_onto_a_folder_moves_into_it_and_back_onto_the_list(
    page: Page, live_site, alice, two_chats
):
    older, newer = two_chats
    travel = Folder.objects.create(owner=alice, name="Travel")
    open_signed_in(page, live_site.url, "alice")
    item(page, older).drag_to(page.locator(f"#folder-{travel.pk} summary"))
    expect(page.locator("#conversations").locator(f"#conversation-{older.pk}")).to_have_count(0)
    page.locator(f"#folder-{travel.pk} summary").click()
    moved = page.locator(f"#folder-{travel.pk}").locator(f"#conversation-{older.pk}")
    expect(moved).to_be_visible()
    assert Conversation.objects.get(pk=older.pk).folder_id == travel.pk
    moved.drag_to(item(page, newer))
    expect(page.locator("#conversations").locator(f"#conversation-{older.pk}")).to_be_visible()
    assert Conversation.objects.get(pk=older.pk).folder_id is None


def test_an_archived_conversation_leaves_the_sidebar_and_is_restored_from_the_archive(
    page: Page, live_site, alice, two_chats
):
    older, _newer = two_chats
    open_signed_in(page, live_site.url, "alice")
    open_menu(page, older).get_by_role("button", name="Archive").click()
    expect(item(page, older)).to_have_count(0)
    # Still found by search.
    page.get_by_role("searchbox", name="Search conversations").fill("Busan")
    expect(page.locator("#search-results").get_by_role("link", name="Trip to Busan")).to_be_visible()
    page.get_by_role("link", name="Archived", exact=True).click()
    expect(page.get_by_role("heading", name="Archived chats")).to_be_visible()
    page.get_by_role("button", name="Restore Trip to Busan").click()
    expect(page.get_by_text("Trip to Busan")).to_have_count(0)
    page.get_by_role("link", name="Back to the chat").click()
    expect(item(page, older)).to_be_visible()
    assert Conversation.objects.get(pk=older.pk).archived_at is None


def test_a_new_chat_picked_with_a_preset_is_sent_with_its_settings(page: Page, live_site, alice, fake_vllm):
    Preset.objects.create(
        owner=alice, name="Pirate", system_prompt="Talk like a pirate.", temperature=1.3, top_p=0.8, max_tokens=99
    )
    open_signed_in(page, live_site.url, "alice")
    page.get_by_role("combobox", name="Preset").select_option(label="Pirate")
    expect(page).to_have_url(re.compile(r"\?preset=[0-9]+$"))
    page.locator("#settings-panel > summary").click()
    expect(page.get_by_role("textbox", name="System prompt")).to_have_value("Talk like a pirate.")
    expect(page.get_by_role("spinbutton", name="Max tokens")).to_have_value("99")
    prompt_box(page).fill("Hello")
    prompt_box(page).press("Enter")
    expect(page.locator("#thread article.assistant")).to_have_count(1)
    conversation = Conversation.objects.get()
    settings = (conversation.system_prompt, conversation.temperature, conversation.top_p, conversation.max_tokens)
    assert settings == ("Talk like a pirate.", 1.3, 0.8, 99)
    assert fake_vllm.requests[0]["messages"][0] == {"role": "system", "content": "Talk like a pirate."}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("theme", THEMES)
def test_axe_finds_nothing_serious_with_pins_folders_and_presets(
    page: Page, live_site, alice, two_chats, theme, language
):
    older, newer = two_chats
    travel = Folder.objects.create(owner=alice, name="Travel")
    Conversation.objects.filter(pk=older.pk).update(pinned=True)
    Conversation.objects.create(owner=alice, title="Busan food", folder=travel)
    archived = Conversation.objects.create(owner=alice, title="Old plans", archived_at="2026-01-01T00:00:00Z")
    preset = Preset.objects.create(owner=alice, name="Pirate", system_prompt="Talk like a pirate.")
    page.emulate_media(color_scheme=theme)
    give_session(page.context, live_site.url, "alice")
    page.set_extra_http_headers({"Accept-Language": language})
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", language)
    page.locator(f"#folder-{travel.pk} summary").click()
    expect(page.locator(f"#folder-{travel.pk} .folder-conversations > li")).to_have_count(1)
    open_menu(page, newer)
    expect(item(page, newer).locator("form.move select option")).to_have_count(2)
    assert serious_violations(page) == []
    for path in ["/archive/", "/presets/", f"/presets/{preset.pk}/", f"/c/{archived.pk}/", f"/?preset={preset.pk}"]:
        page.goto(path)
        expect(page.locator("html")).to_have_attribute("lang", language)
        assert serious_violations(page) == [], path
