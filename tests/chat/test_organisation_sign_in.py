"""Signing in with the organisation's accounts (accounts/oidc.py): the site in daphne processes of its
own, configured from the environment as an operator configures it, against a real OpenID Connect
provider on loopback (django-oauth-toolkit, tests/oidc_provider/), driven over HTTP as a browser
drives it.
"""

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import override_settings

from accounts.models import OrganisationAccount
from chat.models import ApiToken
from tests.accounts import PASSWORD, login
from tests.fixtures_oidc import STAFF_GROUP, stored_tokens
from tests.oidc_provider.server import sign_in_at_provider
from tests.site_server import SiteProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_faults", "administrator")]


def browser(site: SiteProcess) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=30)


def signed_in(client: httpx.Client) -> bool:
    return client.get("/").status_code == 200


def refusal(response: httpx.Response) -> str:
    """Where a refused sign-in ends: the site's sign-in page, saying why."""
    assert response.status_code == 200, response.text
    assert urlsplit(str(response.url)).path == "/accounts/login/"
    return response.text


def to_the_callback(client: httpx.Client, site: SiteProcess, username: str) -> str:
    """The provider's redirect back to the site, signed in there, not yet followed."""
    response = client.get("/oidc/authenticate/")
    while not str(response.headers.get("location", "")).startswith(f"{site.url}/oidc/callback/"):
        assert response.status_code in (200, 302), response.text
        if response.status_code == 200:  # the provider's sign-in form
            token = client.cookies.get("provider_csrftoken")
            response = client.post(
                str(response.url),
                data={
                    "csrfmiddlewaretoken": token,
                    "username": username,
                    "password": PASSWORD,
                    "next": parse_qs(urlsplit(str(response.url)).query)["next"][0],
                },
            )
        else:
            # A provider's own redirects may be relative to it.
            response = client.get(response.url.join(response.headers["location"]))
    return str(response.headers["location"])


def test_the_sign_in_page_offers_the_organisation_beside_the_password(open_site):
    page = browser(open_site).get("/accounts/login/?next=/c/1")
    assert 'name="password"' in page.text
    assert "Sign in with Example Org" in page.text
    assert 'href="/oidc/authenticate/?next=/c/1"' in page.text


def test_a_site_with_no_provider_offers_none(live_site):
    with httpx.Client(base_url=live_site.url, timeout=30) as client:
        assert "/oidc/" not in client.get("/accounts/login/").text
        assert client.get("/oidc/authenticate/").status_code == 404


def test_the_code_flow_asks_for_a_pkce_challenge_state_and_nonce(open_site, provider):
    with browser(open_site) as client:
        start = client.get("/oidc/authenticate/")
    assert start.status_code == 302
    asked = parse_qs(urlsplit(start.headers["location"]).query)
    assert start.headers["location"].startswith(f"{provider.issuer}/authorize/?")
    assert asked["response_type"] == ["code"]
    assert asked["code_challenge_method"] == ["S256"]
    assert len(asked["code_challenge"][0]) == 43  # a SHA-256, base64url
    assert len(asked["state"][0]) >= 32
    assert len(asked["nonce"][0]) >= 32


def test_a_first_sign_in_makes_the_account_and_links_it(open_site, provider):
    provider.person("carol", email="carol@example.org")
    with browser(open_site) as client:
        landed = sign_in_at_provider(client, "carol", start="/oidc/authenticate/?next=/settings/")
        assert urlsplit(str(landed.url)).path in ("/settings/", "/")
        assert signed_in(client)
    carol = User.objects.get(username="carol")
    assert carol.email == "carol@example.org"
    assert not carol.is_staff
    assert carol.organisation_account.subject  # the provider's id, not the address
    # The second time: the same account, found by the provider's id.
    with browser(open_site) as client:
        sign_in_at_provider(client, "carol")
        assert signed_in(client)
    assert User.objects.filter(email="carol@example.org").count() == 1


def test_a_callback_with_a_state_this_browser_never_sent_is_refused(open_site, provider):
    provider.person("dave")
    with browser(open_site) as client:
        callback = to_the_callback(client, open_site, "dave")
        forged = callback.replace("state=", "state=x")
        page = refusal(client.get(forged, follow_redirects=True))
        assert "The sign-in could not be checked. Please start it again." in page
        assert not signed_in(client)


def test_a_callback_cannot_be_replayed(open_site, provider):
    provider.person("erin")
    with browser(open_site) as client:
        callback = to_the_callback(client, open_site, "erin")
        assert client.get(callback).status_code == 302
        assert signed_in(client)
        client.post("/accounts/logout/", headers={"X-CSRFToken": client.cookies["csrftoken"]})
        assert not signed_in(client)
        page = refusal(client.get(callback, follow_redirects=True))
        assert "The sign-in could not be checked" in page
        assert not signed_in(client)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ({"nonce": "not-the-one-the-site-sent"}, "The sign-in could not be checked. Please start it again."),
        ({"issuer": "http://127.0.0.1:1/elsewhere"}, "The sign-in came from a provider this site does not trust."),
        ({"audience": "another-site"}, "The sign-in was meant for another site, not this one."),
        ({"expired": True}, "The sign-in had expired before it reached this site."),
    ],
    ids=["nonce", "issuer", "audience", "expired"],
)
def test_an_id_token_the_site_cannot_trust_is_refused_saying_why(open_site, provider, fault, said):
    provider.person("frank")
    provider.faults(**fault)
    with browser(open_site) as client:
        page = refusal(sign_in_at_provider(client, "frank"))
        assert said in page
        assert not signed_in(client)
    assert not User.objects.filter(username="frank").exists()


def test_a_site_for_existing_people_only_turns_a_stranger_away(closed_site, provider):
    provider.person("grace", email="grace@example.org")
    with browser(closed_site) as client:
        page = refusal(sign_in_at_provider(client, "grace"))
        assert "You have no account on this site yet. Ask its administrator to make you one." in page
        assert not signed_in(client)
    assert not User.objects.filter(username="grace").exists()


def test_a_site_for_existing_people_only_lets_them_in_by_their_address(closed_site, provider):
    heidi = User.objects.create_user("heidi.local", email="Heidi@example.org", password=PASSWORD)
    provider.person("heidi", email="heidi@example.org")
    with browser(closed_site) as client:
        sign_in_at_provider(client, "heidi")
        assert signed_in(client)
    assert OrganisationAccount.objects.get(person=heidi).subject
    assert User.objects.filter(email__iexact="heidi@example.org").count() == 1


def test_staff_status_follows_the_providers_group(open_site, provider):
    provider.person("ivan", groups=(STAFF_GROUP, "everyone"))
    with browser(open_site) as client:
        sign_in_at_provider(client, "ivan")
        assert client.get("/admin/").status_code == 200
    assert User.objects.get(username="ivan").is_staff
    provider.person("ivan", groups=("everyone",))
    with browser(open_site) as client:
        sign_in_at_provider(client, "ivan")
        assert client.get("/admin/").status_code == 302  # to the admin's sign-in
    assert not User.objects.get(username="ivan").is_staff


def test_a_person_deactivated_at_the_provider_is_out_at_the_next_request(open_site, provider):
    provider.person("judy")
    with browser(open_site) as client:
        sign_in_at_provider(client, "judy")
        token = ApiToken.issue(User.objects.get(username="judy"), "laptop")[1]
        bearer = {"Authorization": f"Bearer {token}"}
        assert signed_in(client)
        assert client.get("/api/conversations", headers=bearer).status_code == 200

        provider.person("judy", active=False)
        page = client.get("/", follow_redirects=True)
        assert urlsplit(str(page.url)).path == "/accounts/login/"
        assert "You were signed out: your organisation&#x27;s account is no longer active." in page.text
        assert client.get("/api/conversations", headers=bearer).status_code == 401
        # Back in once the provider lets them in again, and signs them in.
        provider.person("judy")
        assert client.get("/api/conversations", headers=bearer).status_code == 401
        sign_in_at_provider(client, "judy")
        assert signed_in(client)
        assert client.get("/api/conversations", headers=bearer).status_code == 200


def test_the_providers_tokens_are_sealed_and_a_person_whose_tokens_no_key_opens_signs_in_again(open_site, provider):
    provider.person("trent")
    with browser(open_site) as client:
        sign_in_at_provider(client, "trent")
        assert signed_in(client)  # asked the provider again, with the tokens it sealed
        account = OrganisationAccount.objects.get(person__username="trent")
        assert account.refresh_token and account.access_token
        refresh_token, access_token = stored_tokens(account.pk)
        assert account.refresh_token not in refresh_token
        assert account.access_token not in access_token

        # The site's SECRET_KEY changed without its fallback (the test's key is the site's).
        with override_settings(SECRET_KEY="a-secret-key-the-site-never-had"):
            account.save(update_fields=["refresh_token", "access_token"])
        asked = provider.token_requests()
        page = client.get("/", follow_redirects=True)
        assert page.status_code == 200
        assert urlsplit(str(page.url)).path == "/accounts/login/"
        assert "You were signed out" in page.text
        assert provider.token_requests() == asked  # nothing to ask with
        sign_in_at_provider(client, "trent")
        assert signed_in(client)
    account.refresh_from_db()
    assert account.refresh_token and not account.refused


def test_a_person_deactivated_in_the_admin_is_out_at_the_next_request(open_site, provider):
    provider.person("ken")
    with browser(open_site) as client:
        sign_in_at_provider(client, "ken")
        ken = User.objects.get(username="ken")
        bearer = {"Authorization": f"Bearer {ApiToken.issue(ken, 'laptop')[1]}"}
        assert signed_in(client)
        ken.is_active = False
        ken.save()
        assert not signed_in(client)
        assert client.get("/api/conversations", headers=bearer).status_code == 401
        # Nor back in through the provider.
        page = refusal(sign_in_at_provider(client, "ken"))
        assert "Your account on this site is deactivated." in page


def test_a_password_still_signs_in_beside_the_provider(closed_site):
    with browser(closed_site) as client:
        login(client, "admin")
        assert signed_in(client)


def test_the_button_and_a_refusal_speak_korean(open_site, provider):
    provider.person("lee")
    provider.faults(expired=True)
    with httpx.Client(base_url=open_site.url, timeout=30, headers={"Accept-Language": "ko"}) as client:
        assert "Example Org(으)로 로그인" in client.get("/accounts/login/").text
        page = refusal(sign_in_at_provider(client, "lee"))
        assert "로그인이 이 사이트에 도착하기 전에 만료됐어요. 다시 시도해 주세요." in page


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("", "The sign-in could not be checked. Please start it again."),
        ("?code=a-code", "The sign-in could not be checked. Please start it again."),
        ("?code=a-code&state=a-state", "The sign-in could not be checked. Please start it again."),
        ("?error=access_denied&state=a-state", "The organisation&#x27;s sign-in service did not sign you in."),
        ("?code=%00&state=%ff%fe", "The sign-in could not be checked. Please start it again."),
    ],
    ids=["nothing", "no-state", "no-session", "denied", "garbage"],
)
def test_a_callback_anyone_can_send_is_refused_saying_why(open_site, query, said):
    with browser(open_site) as client:
        page = refusal(client.get(f"/oidc/callback/{query}", follow_redirects=True))
        assert said in page
        assert not signed_in(client)


def test_a_sign_in_answer_meant_for_another_browser_signs_nobody_in_there(open_site, provider):
    """Login CSRF: an attacker's own answer from the provider, opened in someone else's browser, must
    not sign that browser in as the attacker (the state is in the attacker's session only)."""
    provider.person("oscar")
    with browser(open_site) as attacker:
        callback = to_the_callback(attacker, open_site, "oscar")
    with browser(open_site) as victim:
        victim.get("/oidc/authenticate/")  # a sign-in of the victim's own, under way
        page = refusal(victim.get(callback, follow_redirects=True))
        assert "The sign-in could not be checked" in page
        assert not signed_in(victim)


def test_an_address_the_provider_did_not_verify_takes_no_account(closed_site, provider):
    """Else anyone who could type Peggy's address at the provider would be Peggy here."""
    User.objects.create_user("peggy", email="peggy@example.org", password=PASSWORD)
    provider.person("not-peggy", email="peggy@example.org")
    provider.faults(unverified_email=True)
    with browser(closed_site) as client:
        page = refusal(sign_in_at_provider(client, "not-peggy"))
        assert "You have no account on this site yet." in page
        assert not signed_in(client)
    assert not OrganisationAccount.objects.exists()


def test_a_person_deactivated_at_the_provider_loses_their_password_sessions_too(open_site, provider):
    User.objects.create_user("quinn", email="quinn@example.org", password=PASSWORD)
    provider.person("quinn", email="quinn@example.org")
    with browser(open_site) as client:
        sign_in_at_provider(client, "quinn")  # links the account
    with browser(open_site) as client:
        login(client, "quinn")
        assert signed_in(client)
        provider.person("quinn", email="quinn@example.org", active=False)
        assert not signed_in(client)


def test_a_code_the_provider_does_not_know_is_refused_saying_so(open_site, provider):
    provider.person("rupert")
    with browser(open_site) as client:
        callback = to_the_callback(client, open_site, "rupert")
        query = parse_qs(urlsplit(callback).query)
        forged = f"/oidc/callback/?code=not-a-code-it-issued&state={query['state'][0]}"
        page = refusal(client.get(forged, follow_redirects=True))
        assert "The organisation&#x27;s sign-in service refused this sign-in. Please start it again." in page
        assert not signed_in(client)


@pytest.mark.parametrize(
    ("form", "said"),
    [
        ("/accounts/login/", "Your username and password didn't match"),
        ("/admin/login/", "Please enter the correct username and password for a staff account."),
    ],
    ids=["site", "admin"],
)
def test_a_password_form_with_a_code_in_its_address_is_a_password_form_only(closed_site, provider, form, said):
    """The provider's backend answers its callback only: else a wrong password posted to an address
    with `code` and `state` in it sent that code to the provider (a request out for anyone's one in),
    and its refusal was a 500 that axes never counted."""
    asked_before = provider.token_requests()
    with browser(closed_site) as client:
        client.get(form)
        response = client.post(
            f"{form}?code=a-code&state=a-state",
            data={
                "username": "admin",
                "password": "not the password",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 200, response.text
        assert said in response.text
        assert not signed_in(client)
    assert provider.token_requests() == asked_before
    assert AccessAttempt.objects.get(username="admin").failures_since_start == 1


@pytest.mark.parametrize("role", ["is_superuser", "is_staff"])
def test_an_administrators_address_at_the_provider_takes_no_administrators_account(closed_site, provider, role):
    """Whoever holds an administrator's address at the provider (a mailbox alias, a recycled address)
    is not the administrator here: such accounts keep their password (README.md)."""
    User.objects.create_user("sybil", email="sybil@example.org", password=PASSWORD, **{role: True})
    provider.person("sybil", email="sybil@example.org")
    with browser(closed_site) as client:
        page = refusal(sign_in_at_provider(client, "sybil"))
        assert "You have no account on this site yet." in page
        assert not signed_in(client)
    assert not OrganisationAccount.objects.exists()
