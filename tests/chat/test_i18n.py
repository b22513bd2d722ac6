"""The site in Korean and in English: the browser's language until a person chooses one in the page,
then theirs in every browser they sign in from, and no one else's.

The first tests ask the site through Django's test client; the rest use it in Chromium, as a person
does, against the site in daphne (tests/fixtures_browser.py).
"""

import io
import json
import re
from collections.abc import Iterator

import pytest
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser, BrowserContext, Page, expect

from accounts.models import LanguageChoice
from chat import turns
from chat.models import Conversation, Message
from tests.accounts import PASSWORD

pytestmark = pytest.mark.django_db


def test_the_sign_in_page_speaks_the_browsers_language(client: Client, alice):
    korean = client.get(reverse("login"), headers={"accept-language": "ko-KR,ko;q=0.9,en;q=0.8"}).content.decode()
    assert '<html lang="ko">' in korean
    assert "<title>로그인 · 로컬 채팅</title>" in korean
    assert "사용자 이름" in korean and "비밀번호" in korean and ">로그인</button>" in korean

    english = client.get(reverse("login"), headers={"accept-language": "en-US,en;q=0.9"}).content.decode()
    assert '<html lang="en">' in english
    assert ">Sign in</button>" in english and "사용자" not in english
    # A language the site does not speak: English, the site's own.
    assert '<html lang="en">' in client.get(reverse("login"), headers={"accept-language": "fr"}).content.decode()


def test_a_failed_sign_in_is_explained_in_korean(client: Client, alice):
    response = client.post(
        reverse("login"), {"username": "alice", "password": "wrong"}, headers={"accept-language": "ko"}
    )
    assert "사용자 이름과 비밀번호가 맞지 않아요. 다시 시도하세요." in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_locked_out_sign_in_is_explained_in_korean(client: Client, alice):
    for _ in range(5):  # the site's default limit of failures for an account
        response = client.post(
            reverse("login"), {"username": "alice", "password": "wrong"}, headers={"accept-language": "ko"}
        )
    assert response.status_code == 429
    assert re.search(
        r"이 계정 또는 이 주소에서 로그인에 너무 자주 실패했어요\. 15분 뒤, \d\d:\d\d UTC 이후에 다시 시도하세요\.",
        response.content.decode(),
    )


def test_a_prompt_too_long_is_refused_in_korean(client: Client, alice, settings):
    settings.CHAT_MAX_PROMPT_CHARS = 100
    client.force_login(alice)
    response = client.post(reverse("chat:send-new"), {"prompt": "가" * 101}, headers={"accept-language": "ko"})
    assert response.status_code == 400
    assert response.json()["error"] == "메시지가 너무 길어요. 최대 100자까지 보낼 수 있어요(지금 101자)."
    response = client.post(
        reverse("chat:send-new"), {"prompt": "hi", "temperature": "warm"}, headers={"accept-language": "ko"}
    )
    assert response.json()["error"] == "Temperature(온도) 값은 숫자여야 해요."


def test_an_interrupted_answer_is_explained_in_the_readers_language(client: Client, alice):
    conversation = Conversation.objects.create(owner=alice, title="여행")
    prompt = Message.objects.create(conversation=conversation, role="user", content="부산 여행 계획")
    Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role="assistant",
        content="먼저",
        status=Message.Status.INTERRUPTED,
        error=turns.INTERRUPTED_TEXT,  # stored in English, as every answer's error is
    )
    client.force_login(alice)
    korean = client.get(reverse("chat:conversation", args=[conversation.pk]), headers={"accept-language": "ko"})
    assert '<span class="status">중단됨</span>' in korean.content.decode()
    assert "답변이 끝나기 전에 사이트가 멈췄어요." in korean.content.decode()
    english = client.get(reverse("chat:conversation", args=[conversation.pk]), headers={"accept-language": "en"})
    assert '<span class="status">Interrupted</span>' in english.content.decode()
    assert turns.INTERRUPTED_TEXT in english.content.decode()


def test_a_new_sites_first_account_page_speaks_korean(client: Client):
    html = client.get(reverse("login"), headers={"accept-language": "ko"}).content.decode()
    assert "환영해요. 이 사이트에는 아직 계정이 없어요." in html and ">계정 만들기</button>" in html
    # Django's own texts (its password rules) come in Korean from Django's catalogue.
    refused = client.post(
        reverse("first-account"),
        {"username": "alice", "password1": "one-password-1", "password2": "another-password-2"},
        headers={"accept-language": "ko"},
    )
    assert refused.status_code == 400
    assert "비밀번호가 일치하지 않습니다" in refused.content.decode()


def test_a_refused_import_is_explained_in_korean(client: Client, alice):
    client.force_login(alice)
    upload = io.BytesIO(b"not json")
    upload.name = "conversations.json"
    response = client.post(reverse("chat:import"), {"file": upload}, headers={"accept-language": "ko"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "아무것도 가져오지 않았어요" in html and "올바른 JSON 파일이 아니에요" in html


def test_the_admins_own_texts_speak_korean(client: Client, admin_user):
    client.force_login(admin_user)
    index = client.get(reverse("admin:index"), headers={"accept-language": "ko"}).content.decode()
    assert "운영자 화면" in index and "채팅 사용량과 모델 서버 상태를 차트로 보기" in index
    Conversation.objects.create(owner=admin_user, title="여행")
    conversations = client.get(reverse("admin:chat_conversation_changelist"), headers={"accept-language": "ko"})
    assert re.search(r'<th scope="col" class="[^"]*column-message_count[^"]*">.*?메시지', conversations.text, re.S)


def test_the_scripts_texts_come_in_the_pages_language(client: Client):
    up = json.dumps("모델 서버 정상")  # the catalogue is JSON, in ASCII
    assert up in client.get(reverse("javascript-catalog"), headers={"accept-language": "ko"}).text
    assert up not in client.get(reverse("javascript-catalog"), headers={"accept-language": "en"}).text


def test_a_chosen_language_is_kept_for_the_person_and_overrides_the_browser(client: Client, alice, bob):
    client.force_login(alice)
    response = client.post(reverse("language"), {"language": "ko", "next": "/"}, headers={"accept-language": "en"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert LanguageChoice.objects.get(person=alice).language == "ko"
    assert '<html lang="ko">' in client.get("/", headers={"accept-language": "en"}).content.decode()

    # Signed in again, from another browser that asks for English: still Korean.
    elsewhere = Client()
    elsewhere.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert '<html lang="ko">' in elsewhere.get("/", headers={"accept-language": "en"}).content.decode()
    # Bob's choice is his own.
    bobs = Client()
    bobs.post(reverse("login"), {"username": "bob", "password": PASSWORD})
    assert '<html lang="en">' in bobs.get("/", headers={"accept-language": "en"}).content.decode()
    # Signed out, the sign-in page is the browser's language again, not the last person's.
    elsewhere.post(reverse("logout"))
    assert '<html lang="en">' in elsewhere.get(reverse("login"), headers={"accept-language": "en"}).content.decode()


def test_choosing_a_language_the_site_does_not_speak_is_refused(client: Client, alice):
    client.force_login(alice)
    assert client.post(reverse("language"), {"language": "xx"}).status_code == 400
    assert client.post(reverse("language"), {}).status_code == 400
    assert client.get(reverse("language")).status_code == 405
    assert not LanguageChoice.objects.exists()


def test_only_a_signed_in_person_chooses_a_language(client: Client):
    response = client.post(reverse("language"), {"language": "ko"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not LanguageChoice.objects.exists()


def test_an_offsite_next_is_not_followed(client: Client, alice):
    client.force_login(alice)
    response = client.post(reverse("language"), {"language": "ko", "next": "https://elsewhere.example/"})
    assert response["Location"] == reverse("chat:index")


# --- In Chromium ----------------------------------------------------------------------------------


class Browsers:
    """Browsers (contexts: each its own cookies and session) that a test opens, and what went wrong
    in their pages' scripts (a text the catalogue lacks would be an error there)."""

    def __init__(self, chromium: Browser, live_site) -> None:
        self.chromium, self.url = chromium, live_site.url
        self.opened: list[BrowserContext] = []
        self.faults: list[str] = []

    def open(self, locale: str) -> Page:
        """A new browser whose person reads `locale` (its Accept-Language and navigator.language)."""
        context = self.chromium.new_context(base_url=self.url, locale=locale, viewport={"width": 1280, "height": 800})
        self.opened.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.faults.append(str(error)))
        return page


@pytest.fixture
def browsers(chromium: Browser, live_site) -> Iterator[Browsers]:
    opened = Browsers(chromium, live_site)
    yield opened
    for context in opened.opened:
        context.close()
    assert opened.faults == []


def sign_in(page: Page, live_site, username: str) -> None:
    page.goto("/accounts/login/")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    expect(page).to_have_url(f"{live_site.url}/")
    page.wait_for_load_state("load")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_chat_page_in_korean_and_in_english(live_site, fake_vllm, alice, browsers: Browsers):
    korean = browsers.open("ko-KR")
    korean.goto("/accounts/login/")
    expect(korean.locator("html")).to_have_attribute("lang", "ko")
    expect(korean.get_by_role("button", name="로그인")).to_be_visible()
    sign_in(korean, live_site, "alice")
    expect(korean).to_have_title("로컬 채팅")
    expect(korean.get_by_role("link", name="+ 새 채팅")).to_be_visible()
    expect(korean.get_by_role("button", name="보내기")).to_be_visible()
    expect(korean.get_by_role("textbox", name="메시지")).to_have_attribute("placeholder", "모델에게 메시지 보내기")
    # Texts the page's scripts write: the model server's state, the theme switch.
    expect(korean.locator("#backend")).to_have_text("모델 서버 정상")
    expect(korean.locator("[data-theme-switch]")).to_have_text("테마: 시스템")

    # A mistake the site explains, in Korean, beside the prompt.
    korean.get_by_role("textbox", name="메시지").fill("   ")
    korean.get_by_role("textbox", name="메시지").press("Enter")
    expect(korean.locator("#prompt-form .form-error")).to_have_text("먼저 메시지를 입력하세요.")
    # An answer, and what the page says of it.
    korean.get_by_role("textbox", name="메시지").fill("안녕하세요")
    korean.get_by_role("textbox", name="메시지").press("Enter")
    expect(korean.locator("#thread article.assistant .meta button", has_text="다시 생성")).to_be_visible()

    english = browsers.open("en-US")
    sign_in(english, live_site, "alice")
    expect(english.locator("html")).to_have_attribute("lang", "en")
    expect(english.get_by_role("button", name="Send")).to_be_visible()
    expect(english.locator("#backend")).to_have_text("model server up")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_language_chosen_in_the_page_follows_the_person_and_no_one_else(
    live_site, fake_vllm, alice, bob, browsers: Browsers
):
    page = browsers.open("en-US")
    sign_in(page, live_site, "alice")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    page.get_by_label("Language").select_option("ko")
    # The page is drawn again, in Korean.
    expect(page.locator("html")).to_have_attribute("lang", "ko")
    expect(page.get_by_role("button", name="보내기")).to_be_visible()
    expect(page.get_by_label("언어")).to_have_value("ko")
    assert LanguageChoice.objects.get(person=alice).language == "ko"

    # Another browser, English by its settings: once Alice signs in, Korean.
    elsewhere = browsers.open("en-US")
    elsewhere.goto("/accounts/login/")
    expect(elsewhere.locator("html")).to_have_attribute("lang", "en")
    sign_in(elsewhere, live_site, "alice")
    expect(elsewhere.locator("html")).to_have_attribute("lang", "ko")
    expect(elsewhere.get_by_role("button", name="보내기")).to_be_visible()

    # Bob, in his own English browser, is not affected.
    bobs = browsers.open("en-US")
    sign_in(bobs, live_site, "bob")
    expect(bobs.get_by_role("button", name="Send")).to_be_visible()
    expect(bobs.get_by_label("Language")).to_have_value("en")

    # And back to English.
    elsewhere.get_by_label("언어").select_option("en")
    expect(elsewhere.locator("html")).to_have_attribute("lang", "en")
    expect(elsewhere.get_by_role("button", name="Send")).to_be_visible()
    assert LanguageChoice.objects.get(person=alice).language == "en"
    assert re.search(r"/$", elsewhere.url)
