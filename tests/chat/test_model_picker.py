"""The page's model picker, with several engines (fake vLLMs on loopback): what it offers, what it
saves, and what it refuses."""

import re

import pytest
from django.urls import reverse

from chat.models import Conversation, Message, ModelChoice
from engine import catalog
from engine.server import starter
from tests.chat.page_html import elements

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def options(html: str) -> list[tuple[str, bool, bool]]:
    """The picker's options: (text, selected, disabled)."""
    picker = re.search(r'<select name="model">(.*?)</select>', html, re.S)
    assert picker, "no model picker on the page"
    return [
        (text, " selected" in attributes, " disabled" in attributes)
        for attributes, text in re.findall(r"<option([^>]*)>([^<]*)</option>", picker.group(1))
    ]


def test_one_model_needs_no_picker(client, alice, fake_vllm):
    client.force_login(alice)
    html = client.get(reverse("chat:index")).content.decode()
    assert 'name="model"' not in html
    assert "qwen2-tiny-random" in html  # the model bar names the one model, as before


def test_the_picker_offers_every_engines_models_and_marks_those_down(client, alice, engines, monkeypatch):
    monkeypatch.setattr(catalog, "TTL", 0)  # every page asks the engines again
    engines("small", "smol-a")
    gone = engines("gone", "gone-model")
    client.force_login(alice)
    client.get(reverse("chat:index"))  # the engine was seen serving its model...
    gone.stop()  # ... and is down now

    response = client.get(reverse("chat:index"))

    assert response.status_code == 200
    assert options(response.content.decode()) == [
        ("qwen2-7b-instruct", True, False),
        ("gone-model (unavailable)", False, True),
        ("smol-a", False, False),
    ]


def test_a_conversations_model_is_saved_as_changed_and_a_new_chat_takes_the_last_choice(client, alice, engines):
    engines("small", "smol-a")
    conversation = Conversation.objects.create(owner=alice, title="Talk")
    client.force_login(alice)

    saved = client.post(reverse("chat:settings", args=[conversation.pk]), {"model": "smol-a"}, headers=HTMX)

    assert saved.status_code == 200
    conversation.refresh_from_db()
    assert conversation.model == "smol-a"
    assert ModelChoice.objects.get(person=alice).model == "smol-a"
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert ("smol-a", True, False) in options(page)
    new_chat = client.get(reverse("chat:index")).content.decode()
    assert ("smol-a", True, False) in options(new_chat)


def test_changing_another_setting_keeps_the_model(client, alice, engines):
    engines("small", "smol-a")
    conversation = Conversation.objects.create(owner=alice, model="smol-a")
    client.force_login(alice)

    client.post(reverse("chat:settings", args=[conversation.pk]), {"temperature": "0.3"}, headers=HTMX)

    conversation.refresh_from_db()
    assert (conversation.model, conversation.temperature) == ("smol-a", 0.3)


def test_a_model_no_engine_serves_is_a_form_error(client, alice, engines):
    engines("small", "smol-a")
    conversation = Conversation.objects.create(owner=alice)
    client.force_login(alice)

    refused = client.post(reverse("chat:settings", args=[conversation.pk]), {"model": "no-such"}, headers=HTMX)
    sent = client.post(reverse("chat:send-new"), {"prompt": "Hello", "model": "no-such"}, headers=HTMX)

    for response in (refused, sent):
        assert response.status_code == 400
        assert "no-such" in response.json()["error"]
    conversation.refresh_from_db()
    assert conversation.model == ""
    assert Conversation.objects.count() == 1 and not Message.objects.exists()
    assert not ModelChoice.objects.exists()


def test_a_new_chats_temperature_is_that_of_the_model_that_will_answer_it(client, alice, engines, settings):
    # The starter model is asked greedily (starter.TEMPERATURE), any other at the site's default:
    # for a new chat, by the model the person last chose, not by the default engine's.
    engines("small", starter.SERVED_NAME)
    client.force_login(alice)

    def temperature_offered() -> float:
        return float(elements(client.get(reverse("chat:index")).content.decode())["temperature"]["value"] or "nan")

    assert temperature_offered() == settings.CHAT_DEFAULT_TEMPERATURE  # the default engine's qwen2-7b-instruct
    ModelChoice.objects.create(person=alice, model=starter.SERVED_NAME)
    assert temperature_offered() == starter.TEMPERATURE
