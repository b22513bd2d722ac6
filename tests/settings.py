"""The site's settings for its tests (pytest's DJANGO_SETTINGS_MODULE, and the sites they start)."""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import env

# Hashing a password the real way takes a good part of a second, once per user a test creates.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No limits on answers unless a test sets them (in the environment of a site it starts, or with
# pytest-django's `settings`): tests start answers much faster than a person does.
CHAT_MAX_ANSWERS_AT_ONCE = env.int("CHAT_MAX_ANSWERS_AT_ONCE", default=0)
CHAT_MAX_ANSWERS_PER_MINUTE = env.int("CHAT_MAX_ANSWERS_PER_MINUTE", default=0)
