"""Fixtures for the API's doors: tokens, and clients that carry them (Django's test client, or
HTTP clients of the live site).

Registered from tests/conftest.py. Tests that use the live site need
`pytest.mark.django_db(transaction=True)`: the site's own process must see the rows they write.
"""

from collections.abc import Iterator

import httpx
import pytest
from django.test import Client

from chat.models import ApiToken


@pytest.fixture
def make_token():
    def make(user, name: str = "test") -> str:
        return ApiToken.issue(user, name)[1]

    return make


@pytest.fixture
def alice_token(alice, make_token) -> str:
    return make_token(alice)


@pytest.fixture
def bob_token(bob, make_token) -> str:
    return make_token(bob)


@pytest.fixture
def alice_client(alice_token) -> Client:
    """Django's test client with Alice's token: the API in the test's own process (and database)."""
    return Client(headers={"Authorization": f"Bearer {alice_token}"})


@pytest.fixture
def bob_client(bob_token) -> Client:
    return Client(headers={"Authorization": f"Bearer {bob_token}"})


def api_client(live_site, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{live_site.url}/api", headers=headers, timeout=15)


@pytest.fixture
def alice_api(live_site, alice_token, fake_vllm) -> Iterator[httpx.Client]:
    """Alice's token on the live site's REST API, with the fake vLLM reset for the test."""
    with api_client(live_site, alice_token) as client:
        yield client


@pytest.fixture
def bob_api(live_site, bob_token) -> Iterator[httpx.Client]:
    with api_client(live_site, bob_token) as client:
        yield client
