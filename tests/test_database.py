"""The SQLite database as the settings open it."""

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def test_sqlite_commits_wait_for_no_fsync():
    # WAL with synchronous=NORMAL: a commit is not an fsync (bench/README.md: each turn commits
    # several times, and at FULL each one waited for the disk).
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's own setting")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous")
        (synchronous,) = cursor.fetchone()
    assert synchronous == 1  # NORMAL; FULL is 2
