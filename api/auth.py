"""Who is calling the API: a per-user token (`Authorization: Bearer ...`) or the browser's session.

Both return the user, which django-ninja stores as `request.auth`. A request with neither is 401.
"""

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer

from accounts.oidc import still_at_provider
from chat.models import ApiToken


class AuthenticatedRequest(HttpRequest):
    """A request that one of the API's auths let in: django-ninja sets `auth` to the caller."""

    auth: User


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        user = ApiToken.objects.user_for(token) if token else None
        # A person deactivated at the organisation's provider loses their tokens with their sessions.
        # On this request's own thread (chatsite/request_threads.py), which waits for the answer
        # anyway: a slow provider holds no other request's sync code.
        if user is not None and settings.OIDC_ENABLED and not still_at_provider(user):
            return None
        return user


class SessionAuth(APIKeyCookie):
    """The logged-in browser, as on the chat page: unsafe methods must carry the CSRF token.

    Unlike django-ninja's `django_auth`, a request from no logged-in user is 401 rather than a
    CSRF 403, so that "not authenticated" reads the same whichever way a client tried.
    """

    param_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request: HttpRequest) -> Any | None:
        if not request.user.is_authenticated:
            return None
        return super().__call__(request)  # checks CSRF (403 if it fails), then authenticate()

    def authenticate(self, request: HttpRequest, key: str | None) -> User | AnonymousUser:
        return request.user
