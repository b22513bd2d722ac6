import pytest
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
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`make test` runs the suite on several workers, `--dist loadgroup` in
    # pyproject.toml), one worker runs every real-vLLM test: they share one booted vLLM, and the
    # cache it is installed in. The group, the largest, is handed out first, so its minutes of
    # booting vLLM overlap the rest of the suite.
    for item in items:
        if item.get_closest_marker("realvllm"):
            item.add_marker(pytest.mark.xdist_group("realvllm"))


@pytest.fixture(autouse=True)
def site_language():
    """Each test ends in the site's own language. Django's test client runs a request in the test's
    thread, and the language the request activated (a Korean Accept-Language) stays active there."""
    yield
    translation.deactivate()


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


@pytest.fixture(scope="session")
def live_site(django_db_setup, django_db_blocker, fake_vllm_server):
    """The site in a daphne process of its own, on the test database, talking to the fake vLLM."""
    site = SiteProcess(site_env(fake_vllm_server)).start()
    yield site
    site.stop()
