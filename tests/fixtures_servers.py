"""A real PostgreSQL and Redis for the run, and the site on them as several workers; registered
from tests/conftest.py.

Without the servers' programs (outside `make test`, which installs them) their tests are skipped,
except in CI, where that is a failure."""

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.accounts import PASSWORD
from tests.commands import ROOT
from tests.fake_vllm import FakeVLLM
from tests.servers import PostgreSQL, Redis, postgresql_bin, redis_bin
from tests.site_server import SiteWorkers

_databases = itertools.count(1)


def _missing(what: str) -> NoReturn:
    message = f"{what} is not installed (apt-get install postgresql redis-server; `make test` does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    if (bin := postgresql_bin()) is None:
        _missing("PostgreSQL")
    server = PostgreSQL(bin).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    if (program := redis_bin()) is None:
        _missing("redis-server")
    server = Redis(program).start()
    yield server
    server.stop()


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


# migrate, then alice, then her token, as `manage.py migrate`, `shell` and `createtoken` make them,
# in one process: each `manage.py` start costs some 2 CPU-seconds (Django, and the system checks'
# import of every URL's schemas), and these processes only build a database other tests use.
_MIGRATE_AND_ADD_ALICE = """
import io
from django.contrib.auth.models import User
from django.core.management import call_command
call_command("migrate", verbosity=0)
User.objects.create_user("alice", password={password!r})
secret = io.StringIO()
call_command("createtoken", "alice", stdout=secret, stderr=io.StringIO())
print(secret.getvalue().strip())
"""


def migrate_and_add_alice(env: dict[str, str], password: str | None = None) -> str:
    """The database DATABASE_URL names in `env`, migrated, with alice in it; her API token's secret."""
    return manage(env, "shell", "--no-imports", "-v0", "-c", _MIGRATE_AND_ADD_ALICE.format(password=password))


def workers_env(postgresql: PostgreSQL, redis_server: Redis | None, fake: FakeVLLM, **overrides: str) -> dict[str, str]:
    """A fresh, migrated PostgreSQL database with alice in it, Redis (None: one worker, which needs
    none), the fake vLLM; short leases."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": redis_server.url if redis_server else "",
        "VLLM_BASE_URL": fake.base_url,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CHAT_LEASE_SECONDS": "3",
        "CHAT_CHECKPOINT_SECONDS": "0.2",
        **overrides,
    }
    template, env["ALICE_TOKEN"] = _migrated(postgresql, env)
    env["DATABASE_URL"] = postgresql.create_database(f"chat_{next(_databases)}", template=template)
    return env


# By PostgreSQL server (its port): a database migrated once, with alice and her token in it, that each
# test's database is a copy of. Three `manage.py` runs per test would cost seconds each on a busy machine.
_templates: dict[int, tuple[str, str]] = {}


def _migrated(postgresql: PostgreSQL, env: dict[str, str]) -> tuple[str, str]:
    """The template database, made on first use, and alice's API token in it."""
    if postgresql.port not in _templates:
        env = {**env, "DATABASE_URL": postgresql.create_database("chat_template")}
        _templates[postgresql.port] = ("chat_template", migrate_and_add_alice(env, PASSWORD))
    return _templates[postgresql.port]


@pytest.fixture
def own_site_workers(postgresql, redis_server, fake_vllm) -> Iterator[SiteWorkers]:
    """The site as three daphne workers on one port, on PostgreSQL and Redis, against the fake vLLM,
    for one test alone (one that kills a worker; tests/test_workers.py shares one between the others)."""
    site = SiteWorkers(workers_env(postgresql, redis_server, fake_vllm)).start()
    yield site
    site.stop()


@pytest.fixture
def busy_site_workers(postgresql, redis_server, fake_vllm) -> Iterator[SiteWorkers]:
    """`own_site_workers` with the site's own lease (15 s): under a burst of hundreds of streams on a
    small machine a worker's loop can lag its renewals by seconds, and the tests' 3 s lease, short
    so that a killed worker's answers are settled quickly, would take live answers for dead."""
    # With the site's own pool (20 a worker): a burst of starts once held them all through a slow
    # catalog refresh, and other requests waited 20 s for one (chat/turns.py `_chosen`).
    env = workers_env(postgresql, redis_server, fake_vllm, CHAT_LEASE_SECONDS="15")
    site = SiteWorkers(env).start()
    yield site
    site.stop()
