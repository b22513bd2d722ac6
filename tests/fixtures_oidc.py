"""The organisation's OpenID Connect provider (tests/oidc_provider/) and sites that sign in with it,
each in a daphne process of its own; registered from tests/conftest.py. Tests that use them need
`pytest.mark.django_db(transaction=True)`: the sites' processes must see the rows they write.
"""

from collections.abc import Iterator

import pytest
from django.db import connection

from tests.accounts import PASSWORD
from tests.oidc_provider.server import OidcProvider
from tests.site_server import SiteProcess, site_env

STAFF_GROUP = "chat-staff"


def stored_tokens(account_pk: int) -> tuple[str, str]:
    """An OrganisationAccount's refresh and access tokens as the database holds them, as whoever
    reads a dump of it sees them: read past the model and its fields."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT refresh_token, access_token FROM accounts_organisationaccount WHERE id = %s", [account_pk]
        )
        refresh_token, access_token = cursor.fetchone()
    return refresh_token, access_token


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Iterator[OidcProvider]:
    provider = OidcProvider(tmp_path_factory.mktemp("provider")).start()
    yield provider
    provider.stop()


def _organisation_site(provider: OidcProvider, fake_vllm_server, **settings: str) -> SiteProcess:
    site = SiteProcess(site_env(fake_vllm_server, **provider.site_env(), **settings))
    provider.register(site.url)
    return site.start()


@pytest.fixture(scope="module")
def open_site(provider, django_db_setup, django_db_blocker, fake_vllm_server) -> Iterator[SiteProcess]:
    """Makes an account for anyone the provider signs in; staff follow a group; the provider is asked
    again at every request."""
    site = _organisation_site(
        provider,
        fake_vllm_server,
        OIDC_CREATE_ACCOUNTS="true",
        OIDC_STAFF_GROUPS=STAFF_GROUP,
        OIDC_RECHECK_SECONDS="0",
    )
    yield site
    site.stop()


@pytest.fixture(scope="module")
def closed_site(provider, django_db_setup, django_db_blocker, fake_vllm_server) -> Iterator[SiteProcess]:
    """Only people who already have an account here (the default)."""
    site = _organisation_site(provider, fake_vllm_server)
    yield site
    site.stop()


@pytest.fixture
def no_faults(provider) -> Iterator[None]:
    """The provider's ID tokens without faults after the test, whatever it asked for."""
    yield
    provider.faults()


@pytest.fixture
def administrator(django_user_model):
    """The site's first account: without one, its sign-in page offers to make it instead."""
    return django_user_model.objects.create_superuser("admin", password=PASSWORD)
