"""Signing in is throttled (chat/sign_in.py, django-axes): failures lock out an account and an address,
each with its own limit, and the person is told when to try again; a success forgives its account.

The site's defaults: 5 failures per account, 20 per address, 15 minutes.
"""

import re
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.utils import timezone

from tests.accounts import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

WRONG = "not the password"
DID_NOT_MATCH = "Your username and password didn't match"
LOCKED = re.compile(
    r"This account, or this address, failed to sign in too often\. "
    r"Try again in 15 minutes, after (\d\d):(\d\d) UTC\."
)


def sign_in(client, username: str, password: str, *, address: str = "127.0.0.1", admin: bool = False):
    url = "/admin/login/" if admin else "/accounts/login/"
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    assert response["Retry-After"] == "900"
    found = LOCKED.search(response.content.decode())
    assert found, response.content.decode()
    # A minute may have turned since the response was made.
    until = timezone.now() + timedelta(minutes=15)
    assert (int(found[1]), int(found[2])) in {(t.hour, t.minute) for t in (until, until - timedelta(minutes=1))}


def test_the_fifth_wrong_password_locks_the_account_and_says_when_to_try_again(client, alice):
    for _ in range(4):
        response = sign_in(client, "alice", WRONG)
        assert response.status_code == 200
        assert DID_NOT_MATCH in response.content.decode()

    assert_locked_out(sign_in(client, "alice", WRONG))
    # Locked: even the right password is refused now, with the same message.
    assert_locked_out(sign_in(client, "alice", PASSWORD))
    assert "_auth_user_id" not in client.session


def test_a_success_forgives_the_failures_before_it(client, alice):
    for _ in range(4):
        sign_in(client, "alice", WRONG)
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    client.logout()

    for _ in range(4):
        assert sign_in(client, "alice", WRONG).status_code == 200
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_a_success_does_not_forgive_another_accounts_failures_from_the_same_address(client, alice, bob):
    for _ in range(4):
        sign_in(client, "alice", WRONG, address="10.0.0.7")
    assert sign_in(client, "bob", PASSWORD, address="10.0.0.7").status_code == 302
    client.logout()

    assert_locked_out(sign_in(client, "alice", WRONG, address="10.0.0.7"))


def test_an_accounts_failures_count_from_every_address(client, alice):
    for n in range(5):
        sign_in(client, "alice", WRONG, address=f"10.0.0.{n}")
    assert_locked_out(sign_in(client, "alice", PASSWORD, address="10.0.1.1"))


def test_an_address_is_locked_out_after_its_own_limit_across_accounts(client, alice, make_user):
    make_user("carol")
    # Guesses at many accounts, four each: no account reaches its limit, the address reaches its own.
    for n in range(20):
        response = sign_in(client, f"person{n // 4}", WRONG, address="10.0.0.9")
    assert_locked_out(response)
    assert_locked_out(sign_in(client, "carol", PASSWORD, address="10.0.0.9"))
    # Another address is not.
    assert sign_in(client, "alice", PASSWORD, address="10.0.0.10").status_code == 302


def test_the_lockout_ends_after_the_cool_off(client, alice):
    for _ in range(5):
        sign_in(client, "alice", WRONG)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))

    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_admins_sign_in_is_throttled_too_and_an_admin_can_unlock(client, django_user_model, alice):
    django_user_model.objects.create_superuser("root", password=PASSWORD)
    for _ in range(4):
        sign_in(client, "alice", WRONG, admin=True)
    assert_locked_out(sign_in(client, "alice", WRONG, admin=True))

    # An admin lists the attempts and deletes Alice's: she is unlocked.
    admin = Client()
    assert sign_in(admin, "root", PASSWORD, address="10.0.0.2", admin=True).status_code == 302
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert "alice" in listing.content.decode()
    attempt = AccessAttempt.objects.get(username="alice")
    response = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()

    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_live_site_locks_out_and_says_when(live_site, alice):
    """Through daphne, where axes runs as async middleware."""
    with httpx.Client(base_url=live_site.url, timeout=15) as client:
        client.get("/accounts/login/")

        def attempt(password: str) -> httpx.Response:
            return client.post(
                "/accounts/login/",
                data={"username": "alice", "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            )

        assert [attempt(WRONG).status_code for _ in range(4)] == [200] * 4
        locked = attempt(WRONG)
        assert locked.status_code == 429
        assert locked.headers["Retry-After"] == "900"
        assert LOCKED.search(locked.text), locked.text
        assert attempt(PASSWORD).status_code == 429


def test_with_no_cool_off_the_lockout_lasts_until_an_admin_unlocks(client, alice, settings):
    settings.AXES_COOLOFF_TIME = None  # SIGN_IN_LOCKOUT_MINUTES=0
    for _ in range(5):
        response = sign_in(client, "alice", WRONG)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(days=30))

    response = sign_in(client, "alice", PASSWORD)

    assert response.status_code == 429
    assert "Retry-After" not in response
    assert "failed to sign in too often. Ask an administrator to unlock it." in response.content.decode()
