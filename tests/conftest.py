import signal

import pytest
from _pytest.nodeid import NodeId
from django.utils import translation

from tests.accounts import PASSWORD
from tests.site_server import SiteProcess, site_env

# Shared fixtures live in these modules; shared functions and constants in tests/*.py modules of
# their own, imported from there (never from this file or a test module).
pytest_plugins = [
    "tests.fixtures_vllm",
    "tests.fixtures_api",
    "tests.fixtures_standin_vllm",
    "tests.fixtures_servers",
    "tests.fixtures_browser",
    "tests.fixtures_oidc",
]


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background (`make test &`, nohup, a CI runner without job control)
    # inherits SIGINT ignored, and an ignored signal stays ignored in every process the tests start:
    # a `run` or `up` would then never see the Ctrl-C a test sends as a person's (issue 20's hang of
    # test_cli's Ctrl-C test). Each test process takes it back: handlers, unlike ignores, are reset
    # by exec, so the processes it starts begin with the default, as at a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`make test` runs the suite on several workers, `--dist loadgroup` in
    # pyproject.toml), each group of tests runs on one worker, the other tests wherever there is
    # room. One worker runs every real-vLLM test: they share one booted vLLM, and the cache it is
    # installed in (tests/e2e/conftest.py hands them out first, so that booting vLLM overlaps the
    # rest of the suite). A module's tests that share a module-scoped fixture (Chromium, a site of
    # their own, the catalogues remade) run on one worker too, which then makes it once.
    for item in items:
        if item.get_closest_marker("realvllm"):
            _group(config, item, "realvllm")
        elif _uses_a_module_fixture(item):
            _group(config, item, item.nodeid.split("::")[0])


def _group(config: pytest.Config, item: pytest.Item, name: str) -> None:
    item.add_marker(pytest.mark.xdist_group(name))
    # pytest-xdist 3.8 tells its scheduler a test's group by a suffix to its node id, which it writes
    # where pytest 9.2 no longer reads it (pytest-xdist issue 1386): written here the way pytest 9.2
    # keeps node ids, as the fix proposed there does. An older pytest has no `_id`; xdist's own works.
    if getattr(config.option, "loadgroup", False) and isinstance(getattr(item, "_id", None), NodeId):
        item._id = NodeId.parse(f"{item.nodeid}@{name}")


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return False
    return any(definitions[-1].scope == "module" for definitions in fixtures.name2fixturedefs.values())


@pytest.fixture(autouse=True)
def site_language():
    """Each test ends in the site's own language. Django's test client runs a request in the test's
    thread, and the language the request activated (a Korean Accept-Language) stays active there."""
    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def fresh_fragments():
    """Each test starts with no drawn sidebar items (settings.CACHES' per-process "fragments"):
    the test database gives a rolled-back test's primary keys to the next, so an item drawn for one
    test's conversation would be read back for another's of the same id and title."""
    from django.core.cache import caches

    caches["fragments"].clear()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    # A file, not SQLite's in-memory database: the site under test runs in its own process and
    # must see the rows the tests write.
    from django.db import connections

    database = connections["default"].settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database["TEST"]["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture
def make_user(django_user_model):
    def make(username: str = "alice"):
        return django_user_model.objects.create_user(username=username, password=PASSWORD)

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def staff_client(client, django_user_model):
    """Django's test client signed in as a member of staff (not a superuser): the operator's views."""
    client.force_login(django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True))
    return client


@pytest.fixture(scope="session")
def live_site(django_db_setup, django_db_blocker, fake_vllm_server):
    """The site in a daphne process of its own, on the test database, talking to the fake vLLM."""
    site = SiteProcess(site_env(fake_vllm_server)).start()
    yield site
    site.stop()
