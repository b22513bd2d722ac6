"""Which language the site speaks to a person: the one they chose in the page, else their browser's.

The choice is kept on the person (LanguageChoice) and copied into the session when they sign in;
the middleware reads it from there. The session is read for every request anyway (it holds who is
signed in), so the choice costs no query of its own, and it ends with the session: on a shared
computer the next person to sign in, or the sign-in page after signing out, gets their own
browser's language, not the last person's (a language cookie would outlive signing out). Signed
out, or before choosing, Django's LocaleMiddleware follows the browser (Accept-Language).
"""

from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest
from django.middleware.locale import LocaleMiddleware
from django.utils import translation

from accounts.models import LanguageChoice

SESSION_KEY = "language"


def is_offered(language: str) -> bool:
    return language in dict(settings.LANGUAGES)


class PersonsLanguageMiddleware(LocaleMiddleware):
    """Django's LocaleMiddleware, with the signed-in person's choice first."""

    def process_request(self, request: HttpRequest) -> None:
        chosen = request.session.get(SESSION_KEY)
        if isinstance(chosen, str) and is_offered(chosen):
            translation.activate(chosen)
            request.LANGUAGE_CODE = translation.get_language()
        else:
            super().process_request(request)


def remember(request: HttpRequest, language: str) -> None:
    """Make `language` the signed-in person's, here and in every session they start from now."""
    assert request.user.is_authenticated
    LanguageChoice.objects.update_or_create(person=request.user, defaults={"language": language})
    request.session[SESSION_KEY] = language


@receiver(user_logged_in)
def bring_the_persons_language(sender: object, request: HttpRequest | None, user: Any, **kwargs: object) -> None:
    language = LanguageChoice.objects.filter(person=user).values_list("language", flat=True).first()
    if request is not None and language and is_offered(language):
        request.session[SESSION_KEY] = language
