"""The admin shows conversations with their messages and keeps measured fields read-only."""

import pytest
from django.urls import reverse

from chat.models import Conversation, Message
from tests.accounts import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)
    client.force_login(admin)
    return client


@pytest.fixture
def conversations(alice, bob):
    mine = Conversation.objects.create(owner=alice, title="Tomatoes")
    Message.objects.create(conversation=mine, role="user", content="How do I grow basil?")
    Message.objects.create(
        conversation=mine,
        role="assistant",
        content="Sun and water.",
        status=Message.Status.ERROR,
        model_name="qwen2-7b-instruct",
        completion_tokens=42,
        duration=1.5,
    )
    theirs = Conversation.objects.create(owner=bob, title="Bicycles")
    Message.objects.create(conversation=theirs, role="user", content="Tyre pressure?")
    return mine, theirs


def test_search_finds_conversations_by_message_text(staff_client, conversations):
    page = staff_client.get(reverse("admin:chat_conversation_changelist"), {"q": "basil"}).content.decode()
    assert "Tomatoes" in page
    assert "Bicycles" not in page


@pytest.mark.parametrize(
    ("filters", "shown", "hidden"),
    [
        ({"messages__status__exact": "error"}, "Tomatoes", "Bicycles"),
        ({"messages__model_name": "qwen2-7b-instruct"}, "Tomatoes", "Bicycles"),
    ],
)
def test_filters_by_status_and_model(staff_client, conversations, filters, shown, hidden):
    page = staff_client.get(reverse("admin:chat_conversation_changelist"), filters).content.decode()
    assert shown in page and hidden not in page


def test_filter_by_owner(staff_client, conversations, bob):
    url = reverse("admin:chat_conversation_changelist")
    page = staff_client.get(url, {"owner__id__exact": bob.pk}).content.decode()
    assert "Bicycles" in page and "Tomatoes" not in page


def test_a_conversation_shows_its_messages_inline_with_usage_read_only(staff_client, conversations):
    mine, _ = conversations
    page = staff_client.get(reverse("admin:chat_conversation_change", args=[mine.pk])).content.decode()
    assert "How do I grow basil?" in page and "Sun and water." in page
    assert 'name="messages-1-completion_tokens"' not in page  # shown, not editable
    assert "42" in page
    assert 'name="messages-1-content"' in page
