"""Secrets the site keeps in its database only to use them again (the provider's tokens,
accounts/models.py's OrganisationAccount), sealed there: Fernet (AES-128-CBC and HMAC-SHA256,
`cryptography`) under a key derived from SECRET_KEY, so that whoever reads a dump or a copy of the
database does not get tokens that reach beyond this site.

A value sealed under a key of SECRET_KEY_FALLBACKS still opens: a rotated SECRET_KEY keeps the
tokens, each sealed again under the new key the next time it is written. One that no key opens (the
SECRET_KEY changed without its fallback) reads as no secret at all, never as an error.
"""

import base64
import functools
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Expression
from django.db.models.lookups import Lookup
from django.utils.crypto import salted_hmac

# The keys' purpose: the Fernet keys differ from every other key Django derives from SECRET_KEY
# (sessions', signing's, password resets'), which sign what a browser holds.
KEY_SALT = "accounts.sealed: secrets kept in the database"


def seal(text: str) -> str:
    return _fernet(settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS)).encrypt(text.encode()).decode()


def unseal(sealed: str) -> str:
    """The text, or "" if no key opens it (or it was never sealed)."""
    try:
        return _fernet(settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS)).decrypt(sealed).decode()
    except (InvalidToken, ValueError):  # ValueError: text that is not even base64's ASCII
        return ""


@functools.lru_cache(maxsize=4)  # keyed by the settings, which tests change
def _fernet(secret_key: str, fallbacks: tuple[str, ...]) -> MultiFernet:
    # SECRET_KEY's first: MultiFernet seals with it and opens with each in turn.
    return MultiFernet([_fernet_key(key) for key in (secret_key, *fallbacks)])


def _fernet_key(secret: str) -> Fernet:
    # An HMAC-SHA256 of the secret under its own salt: 32 bytes, Fernet's key length.
    return Fernet(base64.urlsafe_b64encode(salted_hmac(KEY_SALT, "", secret=secret, algorithm="sha256").digest()))


class SealedTextField(models.TextField[str, str]):
    """Text sealed in the database, open in the model; "" stays "" (no secret), unsealed.

    Sealing is new each time (Fernet's random IV), so a sealed value cannot be looked up by its
    text: the field allows no lookup rather than one that never matches.
    """

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return seal(value) if value else value

    def from_db_value(self, value: str | None, expression: Expression, connection: BaseDatabaseWrapper) -> str | None:
        return unseal(value) if value else value

    def get_lookup(self, lookup_name: str) -> type[Lookup[Any]] | None:
        return None
