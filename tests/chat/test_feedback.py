"""Feedback on answers (chat/feedback.py): thumbs up or down and a comment under each answer, on the
page and the REST API; the operator's view of it and its export, for staff only."""

import json

import pytest
from django.urls import reverse

from chat.models import Conversation, Feedback, Message

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def answered(alice):
    conversation = Conversation.objects.create(owner=alice, title="Plans")
    prompt = Message.objects.create(conversation=conversation, role="user", content="What should I plan?")
    answer = Message.objects.create(
        conversation=conversation, parent=prompt, role="assistant", content="World domination.", model_name="qwen"
    )
    return conversation, answer


def feedback_url(answer: Message) -> str:
    return reverse("chat:feedback", args=[answer.conversation_id, answer.pk])


def api_url(answer: Message) -> str:
    return f"/api/conversations/{answer.conversation_id}/messages/{answer.pk}/feedback"


def test_a_thumb_and_a_comment_are_kept_one_per_answer_and_changeable(client, alice, answered):
    conversation, answer = answered
    client.force_login(alice)
    given = client.post(feedback_url(answer), {"rating": "up"}, headers=HTMX)
    assert given.status_code == 200
    assert b'class="thumb up" name="rating" value="up"' in given.content
    assert given.content.count(b'aria-pressed="true"') == 1
    changed = client.post(feedback_url(answer), {"rating": "down", "comment": "Too <b>bold</b>."}, headers=HTMX)
    assert changed.status_code == 200
    (feedback,) = Feedback.objects.all()
    assert (feedback.person, feedback.message, feedback.rating) == (alice, answer, Feedback.Rating.DOWN)
    assert feedback.comment == "Too <b>bold</b>."
    # The page shows it again after a reload, the comment as text.
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert 'value="down" hx-post' in page and 'value="Too &lt;b&gt;bold&lt;/b&gt;."' in page
    assert page.count('aria-pressed="true"') == 1
    # Without script, the site goes back to the conversation.
    assert client.post(feedback_url(answer), {"rating": "up"}).status_code == 302
    assert Feedback.objects.get().rating == Feedback.Rating.UP


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "Choose thumbs up or down."),
        ({"rating": "sideways"}, "Select a valid choice."),
        ({"rating": "up", "comment": "x" * 2001}, "at most 2000 characters"),
        ({"rating": "up", "comment": "a\x00b"}, "Null characters are not allowed."),
    ],
)
def test_bad_feedback_gets_a_clear_message_and_saves_nothing(client, alice, answered, data, error):
    _conversation, answer = answered
    client.force_login(alice)
    response = client.post(feedback_url(answer), data, headers=HTMX)
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert not Feedback.objects.exists()


def test_a_prompt_takes_no_feedback(client, alice, answered):
    _conversation, answer = answered
    client.force_login(alice)
    assert client.post(feedback_url(answer.parent), {"rating": "up"}).status_code == 404
    assert client.get(feedback_url(answer)).status_code == 405
    assert not Feedback.objects.exists()


def test_the_rest_api_gives_and_reads_the_same_feedback(alice_client, bob_client, answered):
    _conversation, answer = answered
    assert alice_client.get(api_url(answer)).status_code == 404  # none yet
    given = alice_client.put(api_url(answer), {"rating": "up", "comment": "좋아요"}, content_type="application/json")
    assert given.status_code == 200
    assert given.json()["rating"] == "up" and given.json()["comment"] == "좋아요"
    changed = alice_client.put(api_url(answer), {"rating": "down"}, content_type="application/json")
    assert changed.json()["rating"] == "down" and changed.json()["comment"] == ""
    assert alice_client.get(api_url(answer)).json()["rating"] == "down"
    assert Feedback.objects.count() == 1
    # Bad input: a clear 422, nothing changed.
    for bad in (
        {"rating": "meh"},
        {"comment": "x"},
        {"rating": "up", "comment": "x" * 2001},
        {"rating": "up", "comment": "\x00"},
        {"rating": "up", "comment": "\ud800"},
    ):
        assert alice_client.put(api_url(answer), bad, content_type="application/json").status_code == 422, bad
    assert alice_client.put(api_url(answer), "not json", content_type="application/json").status_code in {400, 422}
    assert Feedback.objects.get().rating == Feedback.Rating.DOWN
    # Someone else's answer, or a prompt: not found.
    assert bob_client.put(api_url(answer), {"rating": "up"}, content_type="application/json").status_code == 404
    assert bob_client.get(api_url(answer)).status_code == 404
    assert (
        alice_client.put(api_url(answer.parent), {"rating": "up"}, content_type="application/json").status_code == 404
    )
    assert Feedback.objects.count() == 1


def test_the_operator_sees_the_rate_per_model_and_day_and_the_latest_comments(staff_client, alice, bob, answered):
    _conversation, answer = answered
    Feedback.objects.create(message=answer, person=alice, rating=Feedback.Rating.UP, comment="Spot on <script>")
    Feedback.objects.create(message=answer, person=bob, rating=Feedback.Rating.DOWN)
    page = staff_client.get(reverse("ops:feedback")).content.decode()
    assert '<td>qwen</td><td class="number">1</td><td class="number">1</td><td class="number">50%</td>' in page
    assert "Spot on &lt;script&gt;" in page
    export = staff_client.get(reverse("ops:feedback-export"))
    assert export["Content-Disposition"] == 'attachment; filename="feedback.json"'
    rows = json.loads(export.content)
    assert [(row["rating"], row["comment"], row["model"], row["prompt"], row["answer"]) for row in rows] == [
        ("up", "Spot on <script>", "qwen", "What should I plan?", "World domination."),
        ("down", "", "qwen", "What should I plan?", "World domination."),
    ]
    assert "alice" not in export.content.decode()


def test_the_operators_feedback_pages_are_for_staff_only(client, alice, answered):
    _conversation, answer = answered
    Feedback.objects.create(message=answer, person=alice, rating=Feedback.Rating.UP, comment="secret")
    for url in (reverse("ops:feedback"), reverse("ops:feedback-export")):
        assert client.get(url).status_code == 302  # to sign in
        client.force_login(alice)
        response = client.get(url)
        assert response.status_code == 302 and b"secret" not in response.content
        client.logout()
