"""A person's own account from the page: their password, and their API tokens (made, listed, revoked)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from chat.models import MAX_ID, ApiToken
from tests.accounts import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another-long-password-42"


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def test_the_page_links_to_the_password_and_the_tokens(alice_client):
    page = alice_client.get(reverse("chat:index")).content.decode()
    assert f'href="{reverse("password_change")}"' in page
    assert f'href="{reverse("chat:tokens")}"' in page
    assert f'href="{reverse("ops:overview")}"' not in page  # for staff only


def test_a_password_is_changed_with_the_old_one_and_the_session_stays(alice_client, alice):
    form = alice_client.get(reverse("password_change")).content.decode()
    assert "Change your password" in form and 'href="/static/chat/chat.css"' in form

    response = alice_client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        follow=True,
    )

    assert "Password changed" in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)
    assert not alice.check_password(PASSWORD)
    assert alice_client.get(reverse("chat:index")).status_code == 200  # still signed in here


@pytest.mark.parametrize(
    "old, new1, new2, says",
    [
        ("wrong-password", NEW_PASSWORD, NEW_PASSWORD, "Your old password was entered incorrectly"),
        (PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x", "The two password fields didn"),
        (PASSWORD, "short", "short", "This password is too short"),
    ],
)
def test_a_refused_password_change_says_why_and_changes_nothing(alice_client, alice, old, new1, new2, says):
    response = alice_client.post(
        reverse("password_change"), {"old_password": old, "new_password1": new1, "new_password2": new2}
    )
    assert response.status_code == 200
    assert says in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_the_tokens_page_lists_ones_own_tokens_with_their_last_use(alice_client, alice, bob):
    used, _ = ApiToken.issue(alice, "laptop CLI")
    ApiToken.objects.filter(pk=used.pk).update(last_used_at=timezone.now() - timedelta(hours=3))
    ApiToken.issue(alice, "notebook")
    theirs, _ = ApiToken.issue(bob, "bob's script")

    page = alice_client.get(reverse("chat:tokens")).content.decode()

    assert "laptop CLI" in page and "3\xa0hours ago" in page
    assert "notebook" in page and "never" in page
    assert f"{used.prefix}…" in page and used.secret_hash not in page
    assert "bob&#x27;s script" not in page and theirs.prefix not in page


def test_a_new_token_is_named_and_its_secret_shown_once(alice_client, alice):
    response = alice_client.post(reverse("chat:create-token"), {"name": "laptop CLI"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get(user=alice)
    assert token.name == "laptop CLI"
    page = response.content.decode()
    secret = page.split('id="new-secret" value="')[1].split('"')[0]
    assert ApiToken.objects.user_for(secret) == alice
    assert secret not in alice_client.get(reverse("chat:tokens")).content.decode()


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_token_without_a_fitting_name_is_refused_and_none_made(alice_client, name):
    response = alice_client.post(reverse("chat:create-token"), {"name": name})
    assert response.status_code == 400
    assert 'class="form-error"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_person_revokes_their_own_token(alice_client, alice):
    token, secret = ApiToken.issue(alice, "old laptop")
    kept, _ = ApiToken.issue(alice, "new laptop")

    response = alice_client.post(reverse("chat:revoke-token", args=[token.pk]))

    assert response.status_code == 302 and response["Location"] == reverse("chat:tokens")
    assert list(ApiToken.objects.all()) == [kept]
    assert ApiToken.objects.user_for(secret) is None


def test_another_persons_token_is_404_and_stays(alice_client, bob):
    theirs, secret = ApiToken.issue(bob, "bob's")
    for pk in (theirs.pk, theirs.pk + 1000, MAX_ID):
        assert alice_client.post(reverse("chat:revoke-token", args=[pk])).status_code == 404
    assert alice_client.post(f"/account/tokens/{MAX_ID + 1}/revoke").status_code == 404
    assert ApiToken.objects.user_for(secret) == bob


def test_revoking_takes_a_post(alice_client, alice):
    token, _ = ApiToken.issue(alice, "laptop")
    assert alice_client.get(reverse("chat:revoke-token", args=[token.pk])).status_code == 405
    assert alice_client.get(reverse("chat:create-token")).status_code == 405
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_someone_signed_out_is_sent_to_sign_in(client, alice):
    token, _ = ApiToken.issue(alice, "laptop")
    for response in (
        client.get(reverse("chat:tokens")),
        client.post(reverse("chat:create-token"), {"name": "x"}),
        client.post(reverse("chat:revoke-token", args=[token.pk])),
        client.get(reverse("password_change")),
    ):
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert ApiToken.objects.count() == 1


def test_a_tokens_last_use_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    _, secret = ApiToken.issue(alice, "cli")
    with django_assert_num_queries(2):  # found, then its first use written
        assert ApiToken.objects.user_for(secret) == alice
    first_use = ApiToken.objects.get().last_used_at
    with django_assert_num_queries(1):  # found; used a moment ago, so nothing written
        assert ApiToken.objects.user_for(secret) == alice
    assert ApiToken.objects.get().last_used_at == first_use

    ApiToken.objects.update(last_used_at=timezone.now() - timedelta(minutes=2))
    ApiToken.objects.user_for(secret)
    last_use = ApiToken.objects.get().last_used_at
    assert first_use and last_use and last_use > first_use
