"""Migrations that change what is stored: existing conversations come through whole, and the
organisation's tokens are sealed."""

from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.state import StateApps

from accounts.models import OrganisationAccount
from chat import branches, search
from chat.models import Conversation, Message
from tests.fixtures_oidc import stored_tokens

pytestmark = pytest.mark.django_db(transaction=True)

# Before the search index too: undoing the tree rebuilds chat_message on SQLite, which drops the
# index's triggers, so the way back goes to before they were made, and the way forward makes them.
BEFORE_THE_TREE = ("chat", "0002_api_token")


@pytest.fixture
def migrate() -> Iterator[MigrationExecutor]:
    """Migrates to where a test asks; back to the latest afterwards, for the tests that follow."""
    executor = MigrationExecutor(connection)
    yield executor
    to_latest(executor)


def to_latest(executor: MigrationExecutor) -> None:
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def apps_at(executor: MigrationExecutor, target: tuple[str, str]) -> StateApps:
    executor.loader.build_graph()
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


def test_each_conversation_becomes_one_branch_in_the_order_it_was_written(migrate, alice):
    old = apps_at(migrate, BEFORE_THE_TREE)
    OldConversation, OldMessage = old.get_model("chat", "Conversation"), old.get_model("chat", "Message")
    chat = OldConversation.objects.create(owner_id=alice.pk, title="Old chat")
    written = [
        OldMessage.objects.create(conversation=chat, role=role, content=content, status=status)
        for role, content, status in [
            ("user", "Hello", "complete"),
            ("assistant", "Hi!", "complete"),
            ("user", "Tell me more", "complete"),
            ("assistant", "Well", "stopped"),
        ]
    ]
    empty = OldConversation.objects.create(owner_id=alice.pk, title="Nothing yet")
    other = OldConversation.objects.create(owner_id=alice.pk, title="Other")
    alone = OldMessage.objects.create(conversation=other, role="user", content="Just this")

    # The tree (0004) and every migration after it: the site's models below are the latest ones.
    to_latest(migrate)

    conversation = Conversation.objects.get(pk=chat.pk)
    assert conversation.branch_tip_id == written[-1].pk
    messages = list(Message.objects.filter(conversation=conversation).order_by("pk"))
    assert [m.parent_id for m in messages] == [None, *[m.pk for m in written[:-1]]]
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "Hello", "complete"),
        ("assistant", "Hi!", "complete"),
        ("user", "Tell me more", "complete"),
        ("assistant", "Well", "stopped"),
    ]
    assert [m.content for m, _ in branches.shown_branch(conversation)] == ["Hello", "Hi!", "Tell me more", "Well"]
    assert Conversation.objects.get(pk=empty.pk).branch_tip_id is None
    other_now = Conversation.objects.get(pk=other.pk)
    assert other_now.branch_tip_id == alone.pk
    assert Message.objects.get(pk=alone.pk).parent_id is None


def test_messages_written_before_search_knew_their_owner_are_found_after(migrate, alice, bob):
    # PostgreSQL's search reads each message's owner from a column that 0007 adds and fills.
    owners = ("chat", "0007_message_owner")
    migrate.loader.build_graph()
    before = next(iter(migrate.loader.graph.node_map[owners].parents)).key
    old = apps_at(migrate, before)
    OldConversation, OldMessage = old.get_model("chat", "Conversation"), old.get_model("chat", "Message")
    mine = OldConversation.objects.create(owner_id=alice.pk, title="Old chat")
    theirs = OldConversation.objects.create(owner_id=bob.pk, title="Bob's")
    written = OldMessage.objects.create(conversation=mine, role="user", content="the lighthouse keeper")
    OldMessage.objects.create(conversation=theirs, role="user", content="bob's lighthouse")

    to_latest(migrate)

    assert [hit.message_id for hit in search.search(alice, "lighthouse").messages] == [written.pk]
    assert [hit.message_id for hit in search.search(alice, "li").messages] == [written.pk]


def test_the_providers_tokens_stored_in_clear_are_sealed_and_back_in_clear_when_undone(migrate, alice, bob):
    before = ("accounts", "0003_organisation_account")
    OldAccount = apps_at(migrate, before).get_model("accounts", "OrganisationAccount")
    alices = OldAccount.objects.create(
        person_id=alice.pk,
        subject="alice-at-the-provider",
        refresh_token="alices-refresh",
        access_token="alices-access",
    )
    bobs = OldAccount.objects.create(person_id=bob.pk, subject="bob-at-the-provider", refresh_token="", access_token="")

    to_latest(migrate)
    refresh_token, access_token = stored_tokens(alices.pk)
    assert "alices" not in refresh_token and "alices" not in access_token
    account = OrganisationAccount.objects.get(pk=alices.pk)
    assert (account.refresh_token, account.access_token) == ("alices-refresh", "alices-access")
    assert stored_tokens(bobs.pk) == ("", "")

    apps_at(migrate, before)
    assert stored_tokens(alices.pk) == ("alices-refresh", "alices-access")
    assert stored_tokens(bobs.pk) == ("", "")
