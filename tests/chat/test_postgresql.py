"""Search, export and import, folders, and accounts made at sign-in, on PostgreSQL, as a site whose
DATABASE_URL names one runs them.

What differs by database (chat/search.py's index and queries, the import's one transaction) is
tested by running those tests' modules once more, in a pytest of their own whose DATABASE_URL is a
real PostgreSQL server (the run's own, tests/servers.py). `make test` installs Debian's
`postgresql` package; without it, this is skipped (a failure in CI).
"""

import os
import subprocess
import sys

import pytest

from tests.commands import ROOT
from tests.servers import PostgreSQL

MODULES = [
    "tests/chat/test_search.py",
    "tests/chat/test_exports.py",
    "tests/api/test_history.py",
    "tests/chat/test_migrations.py",  # 0007 fills each message's owner on PostgreSQL
    # A folder's name taken (an IntegrityError in a transaction), the lists' partial indexes
    "tests/chat/test_folders.py",
    "tests/api/test_shelves_and_presets.py",
    # Two first sign-ins at once: a unique username or subject refused in a transaction, then a retry
    "tests/chat/test_organisation_accounts.py",
    # The check with the provider: its conditional updates, the tokens sealed in their columns
    "tests/chat/test_organisation_checks.py",
]


@pytest.mark.timeout(600)
def test_search_export_and_import_pass_on_postgresql(postgresql: PostgreSQL):
    env = {**os.environ, "DATABASE_URL": postgresql.create_database("chat_history")}
    # The module's tests, and none of this one (it would start another server, forever).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary
    # What only PostgreSQL runs did run: its trigram index serves the search.
    assert "PostgreSQL's pg_trgm index" not in result.stdout
