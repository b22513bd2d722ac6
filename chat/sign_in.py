"""Signing in: django-axes counts failed sign-ins, on the page and in the admin alike, and refuses an
account or an address that has failed too often, for SIGN_IN_LOCKOUT_MINUTES.

Axes has one limit for all it counts; here an account and an address each have their own
(SIGN_IN_FAILURES_PER_ACCOUNT, SIGN_IN_FAILURES_PER_ADDRESS), as many people may sign in from one
address (a lab behind one router). The admin unlocks by deleting the "access attempts" it lists.
"""

import math
from datetime import timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off, get_lockout_parameters
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

# What a sign-in form sent (username, password), as axes passes it around.
type Credentials = dict[str, Any]


def failure_limits() -> dict[str, int]:
    """The failures that lock out each thing axes counts by (its "lockout parameters")."""
    return {"username": settings.SIGN_IN_FAILURES_PER_ACCOUNT, "ip_address": settings.SIGN_IN_FAILURES_PER_ADDRESS}


def loosest_limit(request: HttpRequest, credentials: Credentials | None) -> int:
    # Axes' own check (at most failures of any one kind, against one limit) must never lock out
    # before ours does. A callable rather than a number also keeps the admin from showing "attempts
    # left" against a limit that is not the one that applies.
    return max(failure_limits().values())


class SignInThrottle(AxesDatabaseHandler):  # type: ignore[misc]  # axes ships no types: its class is Any
    """Axes' database handler (so all workers share the counts), with a limit for each kind."""

    def is_locked(self, request: HttpRequest, credentials: Credentials | None = None) -> bool:
        limits = failure_limits()
        parameters = get_lockout_parameters(request, credentials)
        for parameter, attempts in zip(parameters, self.get_user_attempts(request, credentials), strict=True):
            failures = attempts.aggregate(failures=Sum("failures_since_start"))["failures"] or 0
            if failures >= limits[parameter]:
                return True
        return False

    def user_login_failed(
        self, sender: object, credentials: Credentials, request: HttpRequest | None = None, **kwargs: Any
    ) -> None:
        super().user_login_failed(sender, credentials, request, **kwargs)
        if (
            request is not None
            and not getattr(request, "axes_locked_out", False)
            and self.is_locked(request, credentials)
        ):
            # The failure that reaches a limit is refused with the lockout message at once.
            # Axes' own marks on the request, which its middleware reads.
            setattr(request, "axes_locked_out", True)  # noqa: B010  (not an attribute HttpRequest declares)
            setattr(request, "axes_credentials", credentials)  # noqa: B010

    def reset_user_attempts(self, request: HttpRequest, credentials: Credentials | None = None) -> int:
        # A success forgives its own account only. Axes would also forgive every failure from the
        # address, so anyone with an account could sign in between guesses at another's.
        deleted: int = AccessAttempt.objects.filter(username=get_client_username(request, credentials)).delete()[0]
        return deleted


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Credentials | None
) -> HttpResponse:
    """The answer to a sign-in that is refused: what happened, and when to try again."""
    cool_off: timedelta | None = get_cool_off(request)
    # Every refused attempt counts as a failure too, and starts the wait again: it ends a full
    # cool-off from now.
    context = {
        "try_again_at": timezone.now() + cool_off if cool_off else None,
        "cool_off_minutes": math.ceil(cool_off.total_seconds() / 60) if cool_off else None,
    }
    response = render(request, "registration/locked_out.html", context, status=429)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response
