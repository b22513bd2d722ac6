import pytest
from django.conf import settings as django_settings

from tests.site_server import SiteProcess

pytest_plugins = ["tests.fixtures_vllm", "tests.fixtures_api"]

PASSWORD = "a-long-test-password"


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


def site_env(fake_vllm_server, **overrides: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{django_settings.DATABASES['default']['NAME']}",
        "VLLM_BASE_URL": fake_vllm_server.base_url,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        **overrides,
    }


@pytest.fixture(scope="session")
def live_site(django_db_setup, django_db_blocker, fake_vllm_server):
    """The site in a daphne process of its own, on the test database, talking to the fake vLLM."""
    site = SiteProcess(site_env(fake_vllm_server)).start()
    yield site
    site.stop()
