"""Engines in the admin: added, edited, tested and disabled by staff; their keys never shown back,
logged or exported; each one on the operator's view, up or down."""

import logging
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message
from engine import catalog
from engine.models import Engine
from tests.accounts import PASSWORD
from tests.fake_vllm import FakeVLLM

# Transactions: the catalog reads the engines on a thread of its own, with a connection of its own.
pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-engine-key-that-must-stay-secret"


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD))
    return client


@pytest.fixture
def keyed():
    """A fake vLLM started with --api-key."""
    with FakeVLLM(served_model_name="keyed-model", api_key=KEY) as fake:
        yield fake


def change_form(engine: Engine, **changes: str) -> dict[str, str]:
    return {"name": engine.name, "base_url": engine.base_url, "api_key": "", "enabled": "on", **changes}


def test_the_key_is_never_shown_back_and_blank_keeps_it(staff_client, keyed):
    engine = Engine.objects.create(name="gpu2", base_url=keyed.base_url, api_key=KEY)
    url = reverse("admin:engine_engine_change", args=[engine.pk])

    pages = (url, reverse("admin:engine_engine_changelist"), reverse("admin:engine_engine_history", args=[engine.pk]))
    for page in pages:
        html = staff_client.get(page).content.decode()
        assert KEY not in html

    assert staff_client.post(url, change_form(engine, name="gpu-2")).status_code == 302
    engine.refresh_from_db()
    assert (engine.name, engine.api_key) == ("gpu-2", KEY)

    staff_client.post(url, change_form(engine, api_key="sk-new"))
    engine.refresh_from_db()
    assert engine.api_key == "sk-new"

    staff_client.post(url, change_form(engine, remove_api_key="on"))
    engine.refresh_from_db()
    assert engine.api_key == ""


def test_an_engine_moved_to_another_address_does_not_take_its_key_along(staff_client, keyed):
    # Else whoever may edit engines could point one at a host of theirs and be sent its stored key.
    engine = Engine.objects.create(name="gpu2", base_url=keyed.base_url, api_key=KEY)
    url = reverse("admin:engine_engine_change", args=[engine.pk])

    staff_client.post(url, change_form(engine, base_url="http://elsewhere.example:8000/v1"))
    engine.refresh_from_db()
    assert (engine.base_url, engine.api_key) == ("http://elsewhere.example:8000/v1", "")

    staff_client.post(url, change_form(engine, base_url=keyed.base_url, api_key=KEY))
    engine.refresh_from_db()
    assert (engine.base_url, engine.api_key) == (keyed.base_url, KEY)


def test_an_engine_added_in_the_admin_serves_its_models_at_once(staff_client, fake_vllm, settings):
    with FakeVLLM(served_model_name="added-model") as added:
        catalog.forget()
        staff_client.get(reverse("chat:index"))  # the site has read which engines there are

        response = staff_client.post(
            reverse("admin:engine_engine_add"), {"name": "added", "base_url": added.base_url, "enabled": "on"}
        )

        assert response.status_code == 302
        assert 'value="added-model"' in staff_client.get(reverse("chat:index")).content.decode()


def test_a_bad_address_is_refused(staff_client):
    response = staff_client.post(reverse("admin:engine_engine_add"), {"name": "x", "base_url": "gpu2:8000/v1"})
    assert response.status_code == 200
    assert "http:// or https://" in response.content.decode()
    assert not Engine.objects.exists()


def test_the_test_action_says_which_models_an_engine_serves_or_why_it_is_down(staff_client, fake_vllm, caplog):
    up = Engine.objects.create(name="up", base_url=fake_vllm.base_url, api_key=KEY)
    with FakeVLLM() as gone:
        down = Engine.objects.create(name="down", base_url=gone.base_url, api_key=KEY)
    caplog.set_level(logging.DEBUG)

    response = staff_client.post(
        reverse("admin:engine_engine_changelist"),
        {"action": "test", "_selected_action": [up.pk, down.pk]},
        follow=True,
    )

    shown = [str(message) for message in response.context["messages"]]
    assert "up is up and serves qwen2-7b-instruct." in shown
    assert any(text.startswith("down is down: The model server is not reachable") for text in shown)
    assert KEY not in response.content.decode()
    assert KEY not in caplog.text


def test_the_test_action_sends_the_key(staff_client, keyed):
    # Needs the client that sends the bearer key (issue 19 §1).
    engine = Engine.objects.create(name="keyed", base_url=keyed.base_url, api_key=KEY)

    response = staff_client.post(
        reverse("admin:engine_engine_changelist"), {"action": "test", "_selected_action": [engine.pk]}, follow=True
    )

    assert [str(message) for message in response.context["messages"]] == ["keyed is up and serves keyed-model."]
    assert keyed.unauthorized == 0


def test_a_disabled_engine_is_not_offered(staff_client, fake_vllm):
    with FakeVLLM(served_model_name="off-model") as off:
        engine = Engine.objects.create(name="off", base_url=off.base_url)
        staff_client.post(reverse("admin:engine_engine_change", args=[engine.pk]), change_form(engine, enabled=""))

        assert "off-model" not in staff_client.get(reverse("chat:index")).content.decode()
    assert not Engine.objects.get().enabled


def test_the_operators_view_shows_each_engine_up_or_down_with_its_models(staff_client, engines, alice, caplog):
    engines("small", "smol-a")
    gone = engines("gone", "gone-model")
    gone.stop()
    Engine.objects.create(name="keyed", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    conversation = Conversation.objects.create(owner=alice)
    for seconds in (0.2, 0.4, 0.9):
        Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.COMPLETE,
            model_name="smol-a",
            time_to_first_token=seconds,
            created_at=timezone.now() - timedelta(hours=1),
        )

    response = staff_client.get(reverse("ops:live"))

    assert response.status_code == 200
    rows = {engine["name"]: engine for engine in response.context["engines"]}
    assert list(rows) == ["default", "small", "gone", "keyed"]
    assert rows["default"]["up"] and rows["default"]["models"] == ["qwen2-7b-instruct"]
    assert rows["small"]["up"] and rows["small"]["first_token"] == [("smol-a", 0.4)]
    assert not rows["gone"]["up"] and "not reachable" in rows["gone"]["detail"]
    html = response.content.decode()
    assert 'class="down" data-engine="gone"' in html
    assert "smol-a: 0.40 s" in html
    assert KEY not in html and KEY not in caplog.text


def test_no_export_or_api_carries_a_key(client, alice, fake_vllm, make_token):
    Engine.objects.create(name="keyed", base_url=fake_vllm.base_url, api_key=KEY)
    client.force_login(alice)
    token = make_token(alice)

    for response in (
        client.get(reverse("chat:export")),
        client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}),
        client.get("/api/openapi.json"),
    ):
        assert response.status_code == 200
        assert KEY not in body(response)


def body(response) -> str:
    if not response.streaming:
        return response.content.decode()

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return (async_to_sync(read)() if response.is_async else b"".join(response.streaming_content)).decode()
