"""Signing in, on a site with no account yet making the first one from the sign-in page, and the
person's language."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseBase
from django.shortcuts import redirect, render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from accounts import languages
from accounts.forms import FirstAccountForm
from accounts.models import FirstAccount


def site_has_accounts() -> bool:
    return get_user_model()._default_manager.exists()


class AccountAlreadyExists(Exception):
    pass


def create_first_account(form: FirstAccountForm) -> User:
    """Save the form's account if the site still has none; raise AccountAlreadyExists if it has."""
    try:
        with transaction.atomic():
            # The check spares the usual case an IntegrityError; FirstAccount's unique row is what
            # makes a race of two browsers end in one account.
            if site_has_accounts():
                raise AccountAlreadyExists
            user = form.save()
            FirstAccount.objects.create(user=user)
    except IntegrityError:
        raise AccountAlreadyExists from None
    return user


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest) -> HttpResponseBase:
    if site_has_accounts():
        return LoginView.as_view(extra_context=_organisation_sign_in())(request)
    # While there is no account, the page offers to make the first one instead.
    return render(
        request, "registration/login.html", {"first_account_form": FirstAccountForm(), "next": _next(request)}
    )


@sensitive_post_parameters("password1", "password2")
@never_cache
@require_POST
def first_account(request: HttpRequest) -> HttpResponse:
    form = FirstAccountForm(request.POST)
    if site_has_accounts():
        return _taken(request)
    if not form.is_valid():
        context = {"first_account_form": form, "next": _next(request)}
        return render(request, "registration/login.html", context, status=400)
    try:
        user = create_first_account(form)
    except AccountAlreadyExists:
        return _taken(request)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect(_next(request) or resolve_url(settings.LOGIN_REDIRECT_URL))


def _organisation_sign_in() -> dict[str, object]:
    """The "Sign in with …" button, when the site signs in with an OpenID Connect provider."""
    if not settings.OIDC_ENABLED:
        return {}
    return {"organisation_sign_in": True, "organisation_provider": settings.OIDC_PROVIDER_NAME}


def _taken(request: HttpRequest) -> HttpResponse:
    messages.info(
        request, gettext("The site's first account has just been made (in another browser?): sign in with it.")
    )
    return redirect("login")


@login_required
@require_POST
def choose_language(request: HttpRequest) -> HttpResponse:
    """The page's language menu: the person's language from now on, in every browser they use."""
    language = request.POST.get("language", "")
    if not languages.is_offered(language):
        return HttpResponseBadRequest(gettext("The site does not speak that language."))
    languages.remember(request, language)
    # The menu changes on its own (htmx): the whole page is drawn again in the new language.
    if request.headers.get("HX-Request") == "true":
        return HttpResponse(status=204, headers={"HX-Refresh": "true"})
    return redirect(_next(request) or resolve_url(settings.LOGIN_REDIRECT_URL))


def _next(request: HttpRequest) -> str:
    """Where to go after signing in, if the request names a page of this site."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return wanted if safe else ""
