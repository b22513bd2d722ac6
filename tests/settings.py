"""The site's settings for its tests (pytest's DJANGO_SETTINGS_MODULE, and the sites they start)."""

import tempfile
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from chatsite.settings import *  # noqa: F403
from chatsite.settings import env

# Hashing a password the real way takes a good part of a second, once per user a test creates.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No limits on answers unless a test sets them (in the environment of a site it starts, or with
# pytest-django's `settings`): tests start answers much faster than a person does.
CHAT_MAX_ANSWERS_AT_ONCE = env.int("CHAT_MAX_ANSWERS_AT_ONCE", default=0)
CHAT_MAX_ANSWERS_PER_MINUTE = env.int("CHAT_MAX_ANSWERS_PER_MINUTE", default=0)

# Files attached to prompts, kept out of the checkout; the same folder for the tests and the sites
# they start (which read these settings too), so that a file one stores the other finds.
CHAT_FILES_ROOT = Path(env.str("CHAT_FILES_ROOT", default=str(Path(tempfile.gettempdir()) / "chatsite-test-files")))

# A host whose clock is off (tests/test_faults.py starts a worker so): this process's
# `timezone.now()`, which Django's auto_now fields and the site's own code read, runs this many
# seconds ahead (or behind).
if _skew := env.float("TEST_CLOCK_SKEW_SECONDS", default=0.0):
    _host_now = timezone.now
    timezone.now = lambda: _host_now() + timedelta(seconds=_skew)
