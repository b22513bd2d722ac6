"""The account made at a person's first sign-in with the organisation's provider (accounts/oidc.py's
`create_user`) when two sign-ins make it at once: two tabs, a double click at the provider, or two new
people with the same name there. Each found no one and goes on to make the account; the other's,
made meanwhile by a transaction of its own (on a connection of its own, as a site's other request
has), is there by the time this one writes. Neither may fail (a 500), and the same person must stay
one person. Run on PostgreSQL too (tests/chat/test_postgresql.py).
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from accounts import oidc
from accounts.models import OrganisationAccount

# Another thread's connection: what it writes is committed, as another request's would be.
pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(claims: dict[str, Any], tokens: str = "first") -> User:
    """A callback's part that makes the account, once the provider's claims are checked and no one
    was found by them."""
    backend = oidc.OrganisationBackend()
    backend.token_info = {"access_token": f"{tokens}-access", "refresh_token": f"{tokens}-refresh"}
    return backend.create_user(claims)


def in_another_transaction[T](work: Callable[[], T]) -> T:
    def run() -> T:
        try:
            return work()
        finally:
            connection.close()  # this thread's

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(run).result()


@pytest.fixture
def between_the_check_and_the_create(monkeypatch) -> Callable[[Callable[[], object]], None]:
    """Runs `work` once, in another transaction, right after `create_user` found its username free
    and before it writes the account: the narrowest point of the race."""

    def meanwhile(work: Callable[[], object]) -> None:
        free_username = oidc._free_username
        pending = [work]

        def checked_then_raced(claims: dict[str, Any]) -> str:
            username = free_username(claims)
            if pending:
                in_another_transaction(pending.pop())
            return username

        monkeypatch.setattr(oidc, "_free_username", checked_then_raced)

    return meanwhile


CAROL = {"sub": "carol-at-the-provider", "preferred_username": "carol", "email": "carol@example.org"}


def test_a_name_taken_between_the_check_and_the_create_takes_the_next_number(between_the_check_and_the_create):
    """Two new people called carol at the provider, signing in at once."""
    other_carol = {"sub": "the-other-carol", "preferred_username": "carol"}
    between_the_check_and_the_create(lambda: sign_in(other_carol))

    carol = sign_in(CAROL)

    assert carol.username == "carol-2"
    assert carol.organisation_account.subject == CAROL["sub"]
    assert User.objects.get(username="carol").organisation_account.subject == "the-other-carol"


def test_the_same_person_made_between_the_check_and_the_create_is_signed_in(between_the_check_and_the_create):
    """Two tabs of Carol's: the other's callback made her, with the name this one found free."""
    between_the_check_and_the_create(lambda: sign_in(CAROL))

    carol = sign_in(CAROL, tokens="second")

    assert User.objects.get() == carol
    assert carol.username == "carol"
    account = OrganisationAccount.objects.get()
    assert (account.person, account.subject) == (carol, CAROL["sub"])
    # Signed in as at any later sign-in: the provider's newest tokens are the ones kept.
    assert account.refresh_token == "second-refresh"


def test_the_same_person_made_before_the_check_is_signed_in_and_no_second_account_stays():
    """Two tabs of Carol's: the other's callback made her after this one looked her up and found no
    one, so that this one finds `carol` taken and tries `carol-2`, which the provider's `sub`,
    already linked, refuses."""
    first = in_another_transaction(lambda: sign_in(CAROL))

    carol = sign_in(CAROL, tokens="second")

    assert carol == first
    assert list(User.objects.values_list("username", flat=True)) == ["carol"]
    assert OrganisationAccount.objects.get().refresh_token == "second-refresh"
