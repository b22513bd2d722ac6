"""Resetting a forgotten password is offered only when the site can mail the link (EMAIL_HOST)."""

import importlib
import re

import pytest
from django.core import mail
from django.urls import clear_url_caches

import chatsite.urls

pytestmark = pytest.mark.django_db

RESET_PAGES = ["/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/"]


def reload_urls() -> None:
    importlib.reload(chatsite.urls)
    clear_url_caches()


@pytest.fixture
def mail_configured(settings):
    # As EMAIL_HOST makes it, with Django's test mailer in place of SMTP.
    unset = settings.MAILERS
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
    reload_urls()
    yield
    settings.MAILERS = unset
    reload_urls()


def test_without_mail_there_is_no_reset_to_offer_and_none_is_tried(client, alice, settings):
    assert settings.MAILERS == {}  # the tests run without EMAIL_HOST
    for page in RESET_PAGES:
        assert client.get(page).status_code == 404, page
    assert client.post("/accounts/password_reset/", {"email": "alice@example.org"}).status_code == 404
    assert client.get("/accounts/reset/MQ/set-password/").status_code == 404
    assert "Forgot your password" not in client.get("/accounts/login/").content.decode()
    assert mail.outbox == []


def test_with_mail_a_forgotten_password_is_reset_by_the_link_mailed(client, alice, mail_configured):
    alice.email = "alice@example.org"
    alice.save()
    login_page = client.get("/accounts/login/").content.decode()
    assert '<a href="/accounts/password_reset/">Forgot your password?</a>' in login_page

    response = client.post("/accounts/password_reset/", {"email": "alice@example.org"})

    assert response.status_code == 302
    [message] = mail.outbox
    assert message.to == ["alice@example.org"]
    found = re.search(r"http://testserver(/accounts/reset/\S+/)", str(message.body))
    assert found is not None, message.body
    link = found[1]
    form = client.get(link, follow=True)
    assert form.status_code == 200
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": "a-new-long-password", "new_password2": "a-new-long-password"}
    )
    assert done.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-password")
