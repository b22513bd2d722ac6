"""The admin creates people, deactivates them (their sessions and tokens stop at once, on the live
site), and shows each one's tokens without their secrets."""

from html.parser import HTMLParser

import httpx
import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from chat.models import ApiToken
from tests.accounts import PASSWORD, login

pytestmark = pytest.mark.django_db(transaction=True)


class FormFields(HTMLParser):
    """What a browser would send for the page's main form: its fields as they are filled in."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        name = attributes.get("name") or ""
        if tag == "input" and name and attributes.get("type") not in ("submit", "button"):
            if attributes.get("type") in ("checkbox", "radio") and "checked" not in attributes:
                return
            self.fields.append(
                (name, attributes.get("value") or ("on" if attributes.get("type") == "checkbox" else ""))
            )
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and "selected" in attributes:
            self.fields.append((self._select, attributes.get("value") or ""))
        elif tag == "textarea":
            self._textarea = name
            self.fields.append((name, ""))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.fields[-1] = (self._textarea, self.fields[-1][1] + data)


def as_filled_in(page: str) -> dict[str, list[str]]:
    parser = FormFields()
    parser.feed(page)
    data: dict[str, list[str]] = {}
    for name, value in parser.fields:
        data.setdefault(name, []).append(value)
    return data


@pytest.fixture
def admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD))
    return client


def test_the_admin_creates_a_person_who_can_then_sign_in(admin, live_site):
    response = admin.post(
        reverse("admin:auth_user_add"),
        {"username": "carol", "password1": PASSWORD, "password2": PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()
    assert User.objects.get(username="carol").is_active

    with httpx.Client(base_url=live_site.url, timeout=10) as browser:
        login(browser, "carol")
        assert browser.get("/").status_code == 200


def test_a_persons_page_in_the_admin_lists_their_tokens_without_secrets(admin, alice, bob):
    token, secret = ApiToken.issue(alice, "laptop CLI")
    ApiToken.issue(bob, "bob's script")

    page = admin.get(reverse("admin:auth_user_change", args=[alice.pk])).content.decode()

    assert "laptop CLI" in page and token.prefix in page
    assert "bob&#x27;s script" not in page
    assert secret not in page and token.secret_hash not in page
    assert 'name="api_tokens-MAX_NUM_FORMS" value="0"' in page  # none added here: see ApiTokenInline


def test_deleting_a_token_from_the_persons_page_revokes_it(admin, alice):
    _, secret = ApiToken.issue(alice, "laptop CLI")
    url = reverse("admin:auth_user_change", args=[alice.pk])
    data = as_filled_in(admin.get(url).content.decode())
    data["api_tokens-0-DELETE"] = ["on"]

    response = admin.post(url, data)

    assert response.status_code == 302, response.content.decode()[:3000]
    assert ApiToken.objects.user_for(secret) is None


def test_deactivating_a_person_stops_their_session_and_their_tokens_at_once(admin, alice, live_site, fake_vllm):
    _, secret = ApiToken.issue(alice, "laptop CLI")
    with (
        httpx.Client(base_url=live_site.url, timeout=10) as browser,
        httpx.Client(base_url=f"{live_site.url}/api", headers={"Authorization": f"Bearer {secret}"}) as program,
    ):
        login(browser, "alice")
        assert browser.get("/").status_code == 200
        assert browser.get("/api/conversations").status_code == 200
        assert program.get("/conversations").status_code == 200

        # In the admin, "Active" unticked on alice's page, the rest of the form sent as it was.
        url = reverse("admin:auth_user_change", args=[alice.pk])
        data = as_filled_in(admin.get(url).content.decode())
        assert data.pop("is_active") == ["on"]
        assert admin.post(url, data).status_code == 302

        page = browser.get("/")
        assert page.status_code == 302 and page.headers["location"].startswith("/accounts/login/")
        assert browser.get("/api/conversations").status_code == 401
        assert program.get("/conversations").status_code == 401
        openai = httpx.get(f"{live_site.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert openai.status_code == 401
        # Nor can they sign in again.
        browser.get("/accounts/login/")
        refused = browser.post(
            "/accounts/login/",
            data={"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        )
        assert refused.status_code == 200


def test_a_token_revoked_from_the_page_stops_working_at_once(alice, live_site, fake_vllm):
    with httpx.Client(base_url=live_site.url, timeout=10) as browser:
        login(browser, "alice")
        created = browser.post(
            "/account/tokens/new", data={"name": "cli", "csrfmiddlewaretoken": browser.cookies["csrftoken"]}
        )
        secret = created.text.split('id="new-secret" value="')[1].split('"')[0]
        program = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{live_site.url}/api/conversations", headers=program).status_code == 200

        token = ApiToken.objects.get(user=alice)
        revoked = browser.post(
            f"/account/tokens/{token.pk}/revoke", data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]}
        )
        assert revoked.status_code == 302

        assert httpx.get(f"{live_site.url}/api/conversations", headers=program).status_code == 401
