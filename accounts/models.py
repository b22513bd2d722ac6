from django.conf import settings
from django.db import models

from accounts.sealed import SealedTextField


class FirstAccount(models.Model):
    """The account made from the sign-in page of a site that had none.

    There can be only one row (`only` is unique), and it is written in the same transaction as
    the account: when two browsers create the first account at once, the database refuses the
    second, whatever its isolation level, and that transaction, account and all, is undone.
    """

    only = models.BooleanField(default=True, unique=True, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"first account: {self.user}"


class LanguageChoice(models.Model):
    """The language a person chose in the page: the site speaks it to them in every browser they
    sign in from, whatever that browser asks for (accounts/languages.py)."""

    person = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="language_choice"
    )
    # A code of settings.LANGUAGES, checked by the view that saves it; not `choices`, so that a
    # language added to the site needs no migration.
    language = models.CharField(max_length=16)

    def __str__(self) -> str:
        return f"{self.person}: {self.language}"


class OrganisationAccount(models.Model):
    """A person's account at the organisation's OpenID Connect provider (accounts/oidc.py).

    `subject` is the provider's id for them (the `sub` claim), which unlike an e-mail address never
    changes. The tokens let the site ask the provider, now and then, whether the person may still
    sign in: secrets, never shown, kept only for that, and sealed in the database (accounts/sealed.py):
    they reach the person's account at the provider, beyond this site. A token that no key of the
    site opens reads as none, and the person must sign in at the provider again.
    """

    person = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="organisation_account"
    )
    subject = models.CharField(max_length=255, unique=True)
    # Not serialized: `dumpdata` would write them unsealed (serializers read the model's value).
    refresh_token = SealedTextField(blank=True, editable=False, serialize=False)
    access_token = SealedTextField(blank=True, editable=False, serialize=False)
    # When the provider last said the person may still sign in.
    checked_at = models.DateTimeField(null=True, editable=False)
    # The provider refused them: their sessions and API tokens are out until they sign in there again.
    refused = models.BooleanField(default=False, editable=False)

    def __str__(self) -> str:
        return f"{self.person} at the provider: {self.subject}"
