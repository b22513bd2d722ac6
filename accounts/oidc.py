"""Signing in with the organisation's accounts: OpenID Connect's code flow, by mozilla-django-oidc.

The library runs the flow (the redirect with state, nonce and a PKCE challenge; the code exchanged
for tokens; the ID token's signature checked against the provider's keys). What this module adds:

- the ID token's issuer, audience and expiry checked too (the library checks only the signature
  and the nonce), and every refusal told to the person on the sign-in page rather than a 400 or 500;
- a person linked to the provider's `sub` (an OrganisationAccount), found by it at later sign-ins;
  an account made at the first sign-in, or only existing people let in (OIDC_CREATE_USER);
- staff status from a group or role claim (OIDC_STAFF_GROUPS);
- a person deactivated in the admin out of their sessions at their next request (the library's
  `get_user` does not check), and one deactivated at the provider out of their sessions and API
  tokens at their first request after OIDC_RECHECK_SECONDS (`still_at_provider`).
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

import jwt
import requests
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import alogout
from django.contrib.auth.models import User
from django.core.exceptions import MiddlewareNotUsed, SuspiciousOperation
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.decorators import async_only_middleware
from django.utils.translation import gettext, gettext_lazy
from django_stubs_ext import StrPromise
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView

from accounts.models import OrganisationAccount

logger = logging.getLogger("accounts")

# Clocks of the site and the provider may differ by this much when reading a token's times.
CLOCK_LEEWAY = 60


class SignInRefused(Exception):
    """The provider's answer does not let this person in; the message says why, to them."""

    def __init__(self, message: str | StrPromise) -> None:
        super().__init__(str(message))
        self.message = message


UNTRUSTED_TOKEN = gettext_lazy("The sign-in could not be trusted (its token is not valid). Please try again.")
WRONG_ISSUER = gettext_lazy("The sign-in came from a provider this site does not trust. Please try again.")
WRONG_AUDIENCE = gettext_lazy("The sign-in was meant for another site, not this one. Please try again.")
EXPIRED = gettext_lazy("The sign-in had expired before it reached this site. Please try again.")


class OrganisationBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    """mozilla-django-oidc's backend, with the checks and the linking described above."""

    token_info: dict[str, Any]

    def authenticate(self, request: HttpRequest | None, **credentials: Any) -> User | None:
        # Django asks every backend, the password form's too: the library's would take any `code`
        # and `state` in that request's query for a provider's answer, and post the code to the
        # token endpoint (its refusal a 500, and a failed password never counted by axes). Only the
        # callback view passes the nonce it kept in the session (OIDC_USE_NONCE is on).
        if credentials.get("nonce") is None:
            return None
        user: User | None = super().authenticate(request, **credentials)
        return user

    def get_token(self, payload: dict[str, str]) -> dict[str, Any]:
        # Kept: the refresh token, which the library drops, is how the person is checked later.
        token_info = super().get_token(payload)
        if not isinstance(token_info, dict):  # JSON, but not the object OAuth 2.0 says it is
            raise SignInRefused(UNTRUSTED_TOKEN)
        self.token_info = token_info
        return token_info

    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        try:
            algorithm = jwt.get_unverified_header(payload).get("alg")
            if algorithm != self.OIDC_RP_SIGN_ALGO:
                raise SignInRefused(UNTRUSTED_TOKEN)
            claims: dict[str, Any] = jwt.decode(
                payload,
                key,
                algorithms=[algorithm],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=settings.OIDC_ISSUER,
                leeway=CLOCK_LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise SignInRefused(EXPIRED) from None
        except jwt.InvalidIssuerError:
            raise SignInRefused(WRONG_ISSUER) from None
        except jwt.InvalidAudienceError:
            raise SignInRefused(WRONG_AUDIENCE) from None
        except jwt.InvalidTokenError as error:
            logger.warning("OpenID Connect: an ID token refused: %s", error)
            raise SignInRefused(UNTRUSTED_TOKEN) from None
        return claims

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The ID token's claims with the user info endpoint's: some providers (Entra ID) put groups
        and roles only in the ID token."""
        userinfo = super().get_userinfo(access_token, id_token, payload)
        # OpenID Connect Core 5.3.2: user info about anyone else is a substitution, to refuse.
        if not isinstance(userinfo, dict) or userinfo.get("sub") != payload["sub"]:
            raise SignInRefused(UNTRUSTED_TOKEN)
        return {**payload, **userinfo}

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> QuerySet[User]:
        people = User.objects.filter(organisation_account__subject=claims["sub"])
        if people.exists():
            return people
        # Someone who had an account before the site used the provider: their address, if the
        # provider says it verified it (else anyone who could type it there would take the account:
        # Entra ID, which sends no `email_verified`, is so), and if no one at the provider has
        # claimed that account already.
        email = claims.get("email")
        if not email or str(claims.get("email_verified")).lower() != "true":
            return User.objects.none()
        # Never an administrator's account, whoever the provider says has its address: one is linked
        # by signing in with the password and then with the provider (README.md).
        return User.objects.filter(
            email__iexact=email, organisation_account__isnull=True, is_superuser=False, is_staff=False
        )

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User:
        user: User | None = super().get_or_create_user(access_token, id_token, payload)
        if user is None:  # none matched, and OIDC_CREATE_USER is off
            raise SignInRefused(
                gettext_lazy("You have no account on this site yet. Ask its administrator to make you one.")
            )
        return user

    def create_user(self, claims: dict[str, Any]) -> User:
        # Two sign-ins at once (two tabs, a double click at the provider, two new people with one
        # name there) both found no one and both come here: the database's unique username and
        # subject refuse the second's account, which then signs in the person the first made, or
        # takes the next free name. The account and its link are one transaction, so that a link
        # refused leaves no account behind.
        while True:
            username = _free_username(claims)
            try:
                with transaction.atomic():
                    user = User.objects.create_user(username, email=claims.get("email") or "")
                    return self.update_user(user, claims)
            except IntegrityError:
                # The same person's other sign-in made them, and linked them to their `sub` (only
                # a person not linked yet is found by their address: none a sign-in makes).
                if made := User.objects.filter(organisation_account__subject=claims["sub"]).first():
                    return self.update_user(made, claims)
                # Anything but a name taken meanwhile is no race: not to retry forever.
                if not User.objects.filter(username=username).exists():
                    raise

    def update_user(self, user: User, claims: dict[str, Any]) -> User:
        if not user.is_active:
            raise SignInRefused(gettext_lazy("Your account on this site is deactivated."))
        if settings.OIDC_STAFF_GROUPS and not user.is_superuser:
            # A superuser keeps the admin whatever the provider says: the site must keep someone
            # who can run it.
            is_staff = any(group in settings.OIDC_STAFF_GROUPS for group in _groups(claims))
            if user.is_staff != is_staff:
                user.is_staff = is_staff
                user.save(update_fields=["is_staff"])
        OrganisationAccount.objects.update_or_create(
            person=user,
            defaults={
                "subject": claims["sub"],
                "refresh_token": self.token_info.get("refresh_token") or "",
                "access_token": self.token_info.get("access_token") or "",
                "checked_at": timezone.now(),
                "refused": False,
            },
        )
        return user

    def get_user(self, user_id: int) -> User | None:
        # The library's returns a deactivated person too, whose session would then go on.
        user: User | None = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None


def _groups(claims: dict[str, Any]) -> list[str]:
    """The groups claim as a list of names: one name alone is a list of one; anything else (a number,
    an object: a provider's misconfiguration) is no groups, not a failed sign-in."""
    groups = claims.get(settings.OIDC_GROUPS_CLAIM)
    if isinstance(groups, str):
        return [groups]
    if isinstance(groups, list):
        return [group for group in groups if isinstance(group, str)]
    return []


def _free_username(claims: dict[str, Any]) -> str:
    wanted = str(claims.get("preferred_username") or (claims.get("email") or "").split("@")[0] or claims["sub"])
    wanted = wanted[:140]
    username, number = wanted, 1
    while User.objects.filter(username__iexact=username).exists():
        number += 1
        username = f"{wanted}-{number}"
    return username


class SignInCallback(OIDCAuthenticationCallbackView):  # type: ignore[misc]
    """Where the provider sends the browser back: any refusal is said on the sign-in page."""

    def get(self, request: HttpRequest) -> HttpResponseBase:
        try:
            response: HttpResponseBase = super().get(request)
        except SignInRefused as refusal:
            return self._refused(refusal.message)
        except SuspiciousOperation as error:
            # A state this browser never sent (a forged or replayed answer, or one from another
            # tab's sign-in), a nonce that does not match, a key the provider does not publish.
            logger.warning("OpenID Connect: a sign-in refused: %s", error)
            return self._refused(gettext("The sign-in could not be checked. Please start it again."))
        except requests.HTTPError as error:
            # The token endpoint refused the code: used already, expired, or its PKCE verifier wrong.
            logger.warning("OpenID Connect: the provider refused a code: %s", error)
            return self._refused(
                gettext("The organisation's sign-in service refused this sign-in. Please start it again.")
            )
        except requests.RequestException as error:
            logger.warning("OpenID Connect: the provider failed: %s", error)
            return self._refused(gettext("The organisation's sign-in service did not answer. Please try again later."))
        return response

    def login_failure(self) -> HttpResponse:
        if self.request.GET.get("error"):
            return self._refused(gettext("The organisation's sign-in service did not sign you in."))
        return self._refused(gettext("The sign-in could not be checked. Please start it again."))

    def _refused(self, message: str | StrPromise) -> HttpResponse:
        messages.error(self.request, message)
        return redirect("login")


def still_at_provider(user: User) -> bool:
    """Whether the provider still lets in a person who signed in with it (True for anyone else).

    Asked with the person's refresh token (a refresh grant, which providers refuse for a disabled
    account) at most every OIDC_RECHECK_SECONDS; a provider that does not answer leaves the person
    as they were, so that its outage does not sign the whole team out.
    """
    # Without the tokens, read below only to ask: unsealing them at each of the person's requests
    # (a JWT access token is 1-2 kB) took a fifth more CPU than the rest of this check.
    account = OrganisationAccount.objects.defer("refresh_token", "access_token").filter(person=user).first()
    if account is None:
        return True
    if account.refused:
        return False
    recheck = timedelta(seconds=settings.OIDC_RECHECK_SECONDS)
    if settings.OIDC_RECHECK_SECONDS and account.checked_at and timezone.now() - account.checked_at < recheck:
        return True
    # One request asks, the one that moves `checked_at` on: a provider that rotates refresh tokens
    # would refuse the second of two requests asking with the same one, and sign the person out.
    # The others, in the meantime, take the person as still in.
    now = timezone.now()
    if not OrganisationAccount.objects.filter(pk=account.pk, checked_at=account.checked_at).update(checked_at=now):
        return not OrganisationAccount.objects.filter(pk=account.pk, refused=True).exists()
    asking = OrganisationAccount.objects.filter(pk=account.pk).first()
    if asking is None:  # unlinked in the admin meanwhile
        return True
    if not asking.refresh_token and not asking.access_token:
        # Nothing to ask with: tokens sealed under a key the site no longer has (accounts/sealed.py),
        # the site's own fault, not the provider's word. Refused for now, as an empty token would
        # be at the provider, but nothing stored: once the key is back among SECRET_KEY_FALLBACKS
        # (or on a worker that has it), the next request asks the provider with the tokens again.
        logger.warning("OpenID Connect: the tokens of %s cannot be read; they must sign in again", account.person_id)
        OrganisationAccount.objects.filter(pk=account.pk, checked_at=now).update(checked_at=account.checked_at)
        return False
    verdict = _ask_provider(asking)
    if verdict is None:
        return True
    # Only if nothing wrote the account while the provider was asked: a sign-in meanwhile brought
    # new tokens and moved `checked_at`, and its verdict holds.
    asked_with = OrganisationAccount.objects.filter(pk=account.pk, checked_at=now)
    if verdict is False:
        asked_with.update(refused=True)
        return False
    asked_with.update(**verdict)
    return True


def _ask_provider(account: OrganisationAccount) -> dict[str, str] | Literal[False] | None:
    """The provider's answer: new tokens (still in), False (refused), or None (no clear answer)."""
    try:
        if account.refresh_token:
            response = requests.post(
                settings.OIDC_OP_TOKEN_ENDPOINT,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": account.refresh_token,
                    "client_id": settings.OIDC_RP_CLIENT_ID,
                    "client_secret": settings.OIDC_RP_CLIENT_SECRET,
                },
                timeout=settings.OIDC_TIMEOUT,
            )
            # A body that is JSON but not an object is no clear answer, as one that is not JSON.
            body = response.json() if response.status_code in (200, 400, 401) else {}
            if not isinstance(body, dict):
                raise ValueError(f"the token endpoint answered a {type(body).__name__}, not an object")
            if response.status_code == 200:
                return {
                    "refresh_token": str(body.get("refresh_token") or account.refresh_token),
                    "access_token": str(body.get("access_token") or account.access_token),
                }
            if response.status_code in (400, 401) and body.get("error") == "invalid_grant":
                return False
        else:
            # A provider that gave no refresh token: the access token, until it expires.
            response = requests.get(
                settings.OIDC_OP_USER_ENDPOINT,
                headers={"Authorization": f"Bearer {account.access_token}"},
                timeout=settings.OIDC_TIMEOUT,
            )
            if response.status_code == 200:
                return {}
            if response.status_code in (401, 403):
                return False
    except (requests.RequestException, ValueError) as error:
        logger.warning("OpenID Connect: the provider could not be asked about %s: %s", account.person_id, error)
        return None
    logger.warning("OpenID Connect: the provider answered %s about %s", response.status_code, account.person_id)
    return None


type AsyncChain = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


@async_only_middleware
def still_signed_in_at_provider(get_response: AsyncChain) -> AsyncChain:
    """Signs out, at their next request, a person the provider no longer lets in
    (`still_at_provider`), however they signed in here: with a password too, if they are linked to
    the provider. One query a request (the link), and only on a site that uses a provider."""
    if not settings.OIDC_ENABLED:
        raise MiddlewareNotUsed

    # On a thread of the default pool, with its connection handed back after (as Channels does), not
    # on asgiref's one shared thread: a slow provider would hold every request's sync code behind it.
    ask = database_sync_to_async(still_at_provider, thread_sensitive=False)

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        user = await request.auser()
        if user.is_authenticated and not await ask(user):
            await alogout(request)
            messages.warning(request, gettext("You were signed out: your organisation's account is no longer active."))
        return await get_response(request)

    return middleware
