"""The site asking the organisation's provider whether a person may still sign in
(accounts/oidc.py's `still_at_provider`), on its own: who asks, and what an unanswered question means.
The whole flow against a real provider is tests/chat/test_organisation_sign_in.py."""

import io
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.utils import timezone

from accounts import oidc
from accounts.models import OrganisationAccount
from tests.fixtures_oidc import stored_tokens
from tests.ports import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_account(alice, settings) -> OrganisationAccount:
    settings.OIDC_RECHECK_SECONDS = 60
    settings.OIDC_OP_TOKEN_ENDPOINT = f"http://127.0.0.1:{free_port()}/token/"  # nothing listens
    return OrganisationAccount.objects.create(
        person=alice,
        subject="alice-at-the-provider",
        refresh_token="r1",
        checked_at=timezone.now() - timedelta(hours=1),
    )


def test_two_requests_at_once_ask_the_provider_once(alice, alices_account, monkeypatch):
    asked: list[str] = []
    during_the_ask: list[bool] = []

    def ask(account):
        asked.append(account.refresh_token)
        # Another request of Alice's, while the provider is being asked: it must not ask with the
        # same refresh token, which a provider that rotates them would refuse.
        during_the_ask.append(oidc.still_at_provider(alice))
        return {"refresh_token": "r2", "access_token": "a2"}

    monkeypatch.setattr(oidc, "_ask_provider", ask)
    assert oidc.still_at_provider(alice)
    assert asked == ["r1"]
    assert during_the_ask == [True]
    alices_account.refresh_from_db()
    assert alices_account.refresh_token == "r2"
    assert timezone.now() - alices_account.checked_at < timedelta(minutes=1)


def test_a_provider_that_does_not_answer_leaves_the_person_in(alice, alices_account):
    assert oidc.still_at_provider(alice)
    alices_account.refresh_from_db()
    assert not alices_account.refused


def test_a_person_checked_lately_is_not_asked_about_again(alice, alices_account, monkeypatch):
    alices_account.checked_at = timezone.now()
    alices_account.save()
    monkeypatch.setattr(oidc, "_ask_provider", lambda account: pytest.fail("asked"))
    assert oidc.still_at_provider(alice)


def test_a_person_who_never_signed_in_at_the_provider_is_never_asked_about(bob, monkeypatch):
    monkeypatch.setattr(oidc, "_ask_provider", lambda account: pytest.fail("asked"))
    assert oidc.still_at_provider(bob)


def test_a_persons_link_to_the_provider_shows_in_the_admin_without_its_tokens(
    client, alices_account, django_user_model
):
    admin = django_user_model.objects.create_superuser("admin", password="x")
    client.force_login(admin)
    alices_account.refresh_token = "a-secret-refresh-token"
    alices_account.save()
    page = client.get(f"/admin/auth/user/{alices_account.person_id}/change/")
    assert page.status_code == 200
    assert "alice-at-the-provider" in page.text
    assert "a-secret-refresh-token" not in page.text


def test_the_tokens_are_sealed_in_the_database(alice, alices_account):
    alices_account.refresh_token = "alices-refresh-token-at-the-provider"
    alices_account.access_token = "alices-access-token-at-the-provider"
    alices_account.save()
    refresh_token, access_token = stored_tokens(alices_account.pk)
    assert "alices-refresh-token" not in refresh_token
    assert "alices-access-token" not in access_token
    assert refresh_token and access_token
    alices_account.refresh_from_db()
    assert alices_account.refresh_token == "alices-refresh-token-at-the-provider"
    assert alices_account.access_token == "alices-access-token-at-the-provider"


def test_tokens_the_provider_gives_at_a_check_are_sealed_too(alice, alices_account, monkeypatch):
    monkeypatch.setattr(oidc, "_ask_provider", lambda account: {"refresh_token": "r2-alices-refresh-token"})
    assert oidc.still_at_provider(alice)
    assert "alices-refresh-token" not in stored_tokens(alices_account.pk)[0]
    alices_account.refresh_from_db()
    assert alices_account.refresh_token == "r2-alices-refresh-token"


def test_tokens_sealed_under_an_earlier_secret_key_still_open(alice, alices_account, settings, monkeypatch):
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the-sites-new-secret-key"
    asked: list[str] = []

    def ask(account):
        asked.append(account.refresh_token)
        return {"refresh_token": account.refresh_token, "access_token": "a2"}

    monkeypatch.setattr(oidc, "_ask_provider", ask)
    assert oidc.still_at_provider(alice)
    assert asked == ["r1"]
    # Written again at the check, under the new key: the earlier one is no longer needed for them.
    settings.SECRET_KEY_FALLBACKS = []
    alices_account.refresh_from_db()
    assert (alices_account.refresh_token, alices_account.access_token) == ("r1", "a2")


def test_tokens_no_key_of_the_site_opens_read_as_none_and_the_person_must_sign_in_again(
    alice, alices_account, settings, monkeypatch
):
    sealed_under = settings.SECRET_KEY
    settings.SECRET_KEY = "a-secret-key-that-sealed-nothing-here"
    alices_account.refresh_from_db()
    assert (alices_account.refresh_token, alices_account.access_token) == ("", "")
    # Not asked with nothing: the person is refused at once, until they sign in at the provider.
    monkeypatch.setattr(requests, "post", lambda *args, **kwargs: pytest.fail("asked"))
    monkeypatch.setattr(requests, "get", lambda *args, **kwargs: pytest.fail("asked"))
    assert not oidc.still_at_provider(alice)
    alices_account.refresh_from_db()
    # The site's own key problem, not the provider's word: nothing is recorded against the person,
    # whose next request asks again; with the key back as a fallback, the tokens open and are asked with.
    assert not alices_account.refused
    assert not oidc.still_at_provider(alice)
    settings.SECRET_KEY_FALLBACKS = [sealed_under]
    asked: list[str] = []

    def ask(account):
        asked.append(account.refresh_token)
        return {"refresh_token": account.refresh_token}

    monkeypatch.setattr(oidc, "_ask_provider", ask)
    assert oidc.still_at_provider(alice)
    assert asked == ["r1"]


def test_a_sign_in_while_the_provider_is_asked_keeps_its_verdict_over_the_old_tokens(
    alice, alices_account, monkeypatch
):
    # A provider that gives no refresh token: the site asks with the access token, which expires.
    OrganisationAccount.objects.filter(pk=alices_account.pk).update(refresh_token="", access_token="a1-expired")
    backend = oidc.OrganisationBackend()

    def ask(account):
        assert account.access_token == "a1-expired"
        # Alice signs in again meanwhile, with a new access token from the provider.
        backend.token_info = {"access_token": "a2"}
        backend.update_user(alice, {"sub": "alice-at-the-provider"})
        return False  # the old access token's refusal

    monkeypatch.setattr(oidc, "_ask_provider", ask)
    assert not oidc.still_at_provider(alice)  # this request asked with the old token
    alices_account.refresh_from_db()
    assert not alices_account.refused  # but her sign-in stands
    assert alices_account.access_token == "a2"


def test_a_sealed_token_cannot_be_looked_up_by_its_text(alices_account):
    # Sealing is new each time: a lookup by the text would never match, and so is refused outright.
    with pytest.raises(FieldError):
        OrganisationAccount.objects.filter(refresh_token="r1").exists()


@pytest.fixture
def provider_answering(settings) -> Iterator[Callable[[int, str], None]]:
    """A provider's token and user info endpoints on loopback that answer what the test says."""
    answer: dict[str, object] = {"status": 200, "body": "{}"}

    class Endpoint(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = str(answer["body"]).encode()
            self.send_response(int(str(answer["status"])))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{url}/token/"
    settings.OIDC_OP_USER_ENDPOINT = f"{url}/userinfo/"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{url}/jwks/"

    def answering(status: int, body: str) -> None:
        answer.update(status=status, body=body)

    yield answering
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("status", [200, 400, 401])
@pytest.mark.parametrize("body", ["[]", '"invalid_grant"', "null", "3"])
def test_a_token_endpoint_answering_no_object_is_no_clear_answer(
    alice, alices_account, provider_answering, status, body
):
    provider_answering(status, body)
    assert oidc._ask_provider(alices_account) is None
    assert oidc.still_at_provider(alice)


@pytest.mark.parametrize("body", ["[]", '"a-token"', "null"])
def test_a_sign_in_whose_token_or_user_info_is_no_object_is_refused(provider_answering, body):
    provider_answering(200, body)
    backend = oidc.OrganisationBackend()
    with pytest.raises(oidc.SignInRefused):
        backend.get_token({"grant_type": "authorization_code", "code": "a-code"})
    with pytest.raises(oidc.SignInRefused):
        backend.get_userinfo("an-access-token", "an-id-token", {"sub": "alice-at-the-provider"})


@pytest.mark.parametrize(
    ("groups", "staff"),
    [(5, False), ({"chat-staff": True}, False), ("chat-staff", True), (["chat-staff", 7, None], True), (None, False)],
    ids=["number", "object", "one-name", "mixed-list", "null"],
)
def test_a_groups_claim_that_is_no_list_of_names_is_read_without_failing(alice, settings, groups, staff):
    settings.OIDC_STAFF_GROUPS = ["chat-staff"]
    backend = oidc.OrganisationBackend()
    backend.token_info = {}
    backend.update_user(alice, {"sub": "alice-at-the-provider", "groups": groups})
    alice.refresh_from_db()
    assert alice.is_staff is staff


def test_dumpdata_leaves_the_tokens_out(alices_account):
    # Django's serializers read the model's (unsealed) value: a dump would hold the tokens in clear.
    alices_account.refresh_token = "alices-refresh-token-at-the-provider"
    alices_account.save()
    dump = io.StringIO()
    call_command("dumpdata", "accounts.organisationaccount", stdout=dump)
    assert "alice-at-the-provider" in dump.getvalue()
    assert "alices-refresh-token" not in dump.getvalue()
