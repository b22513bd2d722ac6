"""The first account of a new site, made from the sign-in page: offered only while there is no
account at all, checked by Django's password validators, and made once however many browsers try."""

import threading

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts import views
from accounts.forms import FirstAccountForm
from accounts.models import FirstAccount
from tests.accounts import PASSWORD

User = get_user_model()

pytestmark = pytest.mark.django_db


def new_account(username: str = "ada", password: str = PASSWORD) -> dict[str, str]:
    return {"username": username, "password1": password, "password2": password}


def test_a_site_with_no_account_offers_to_create_one_on_the_sign_in_page(client: Client):
    page = client.get("/accounts/login/?next=/c/5/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "This site has no account yet: create yours." in html
    assert 'action="/accounts/first-account/"' in html
    assert 'name="password2"' in html
    assert 'name="next" value="/c/5/"' in html


def test_the_first_account_is_the_administrator_and_is_signed_in(client: Client):
    response = client.post("/accounts/first-account/", new_account())

    assert response.status_code == 302 and response["Location"] == "/"
    ada = User.objects.get()
    assert (ada.username, ada.is_superuser, ada.is_staff) == ("ada", True, True)
    assert ada.check_password(PASSWORD)
    assert FirstAccount.objects.get().user == ada
    assert client.get("/").status_code == 200  # signed in


def test_the_first_account_goes_on_to_the_page_asked_for_but_not_off_the_site(client: Client):
    assert client.post("/accounts/first-account/", {**new_account(), "next": "/c/new/"})["Location"] == "/c/new/"
    client.logout()
    User.objects.all().delete()
    assert (
        client.post("/accounts/first-account/", {**new_account(), "next": "https://elsewhere.example/"})["Location"]
        == "/"
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (new_account(password="short"), "This password is too short."),
        (new_account(password="password123"), "This password is too common."),
        (new_account(password="83749261538"), "This password is entirely numeric."),
        ({**new_account(), "password2": "something-else-entirely"}, "The two password fields"),
        (new_account(username="not a name!"), "Enter a valid username."),
    ],
)
def test_the_password_validators_and_the_form_refuse_a_weak_or_wrong_account(client: Client, data, error):
    response = client.post("/accounts/first-account/", data)

    assert response.status_code == 400
    assert error in response.content.decode()
    assert not User.objects.exists()


def test_once_an_account_exists_the_offer_is_gone(client: Client, alice):
    page = client.get("/accounts/login/").content.decode()

    assert "create yours" not in page
    assert 'name="password"' in page and "Sign in" in page


def test_once_an_account_exists_creating_another_this_way_is_refused(client: Client, alice):
    response = client.post("/accounts/first-account/", new_account(), follow=True)

    assert list(User.objects.values_list("username", flat=True)) == ["alice"]
    assert response.redirect_chain == [("/accounts/login/", 302)]
    assert "first account has just been made (in another browser?)" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_two_browsers_that_both_found_no_account_make_one_account(monkeypatch):
    # Both checked before either wrote: only FirstAccount's unique row stands between them.
    monkeypatch.setattr(views, "site_has_accounts", lambda: False)
    first, second = FirstAccountForm(new_account("ada")), FirstAccountForm(new_account("grace"))
    assert first.is_valid() and second.is_valid()

    views.create_first_account(first)
    with pytest.raises(views.AccountAlreadyExists):
        views.create_first_account(second)

    assert list(User.objects.values_list("username", flat=True)) == ["ada"]


@pytest.mark.django_db(transaction=True)
def test_two_browsers_racing_on_the_live_site_make_exactly_one_account(live_site):
    browsers = [httpx.Client(base_url=live_site.url, timeout=30) for _ in range(2)]
    for browser in browsers:
        browser.get("/accounts/login/")
    start = threading.Barrier(2)
    outcomes: dict[str, httpx.Response] = {}

    def create(browser: httpx.Client, username: str) -> None:
        start.wait()
        outcomes[username] = browser.post(
            "/accounts/first-account/",
            data={**new_account(username), "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        )

    threads = [threading.Thread(target=create, args=pair) for pair in zip(browsers, ["ada", "grace"], strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    [account] = User.objects.all()
    assert outcomes[account.username].headers["location"] == "/"
    loser = "grace" if account.username == "ada" else "ada"
    assert outcomes[loser].headers["location"] == "/accounts/login/"
    for browser in browsers:
        browser.close()
