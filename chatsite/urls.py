from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from accounts import views as sign_in_pages
from accounts.oidc import SignInCallback
from api.openai_compat import openai_api
from api.rest import api

# Resetting a password mails a link: without a mailer (EMAIL_HOST unset) these pages do not exist,
# so nobody is offered a reset that cannot arrive, and no request makes the site try to send mail.
RESET_BY_MAIL = {"password_reset", "password_reset_done", "password_reset_confirm", "password_reset_complete"}
accounts = [
    url
    for url in auth_urls.urlpatterns
    if "default" in settings.MAILERS or getattr(url, "name", None) not in RESET_BY_MAIL
]

# Signing in with the organisation's accounts (accounts/oidc.py), when a provider is configured. The
# library's own logout view is left out: the site's (a POST) signs out of the site.
organisation_sign_in = [
    path("oidc/authenticate/", OIDCAuthenticationRequestView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", SignInCallback.as_view(), name="oidc_authentication_callback"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    # Before Django's own sign-in page, which it stands in for.
    path("accounts/login/", sign_in_pages.sign_in, name="login"),
    path("accounts/first-account/", sign_in_pages.first_account, name="first-account"),
    path("accounts/language", sign_in_pages.choose_language, name="language"),
    path("accounts/", include(accounts)),
    *(organisation_sign_in if settings.OIDC_ENABLED else []),
    path("api/", api.urls),
    path("v1/", openai_api.urls),
    path("ops/", include("ops.urls")),
    # The page scripts' texts in the language of the request (locale/*/LC_MESSAGES/djangojs.po).
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["chat"]), name="javascript-catalog"),
    path("", include("chat.urls")),
]

# A database that is away or saturated is a 503 that says so, on every door (chatsite/outages.py).
handler500 = "chatsite.outages.server_error"
