"""The site's settings for its tests (pytest's DJANGO_SETTINGS_MODULE, and the sites they start)."""

from chatsite.settings import *  # noqa: F403

# Hashing a password the real way takes a good part of a second, once per user a test creates.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
