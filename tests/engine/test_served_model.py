"""The site asks vLLM which model it serves and how long its context is; the settings are only the
fallback (while vLLM cannot be asked) and the overrides. Each test runs a fake vLLM of its own,
serving the model it needs, on loopback."""

from collections.abc import Iterator

import pytest
from django.test import Client

from chat import turns
from chat.models import ApiToken, Conversation, Message
from chat.turns import TurnEnded
from engine import catalog, served_model, vllm_client
from engine.endpoints import default_endpoint
from engine.vllm_client import GenerationOptions, ServedModel
from tests.chat.page_html import elements
from tests.fake_vllm import FakeVLLM

STARTER_ROOT = "/root/.cache/chatsite/models/smollm2-135m-instruct"


async def ended(answer: Message) -> Message:
    async for event in turns.follow(answer):
        if isinstance(event, TurnEnded):
            return event.message
    raise AssertionError("the turn did not end")


@pytest.fixture
def serving(settings) -> Iterator:
    """Start a fake vLLM serving the given model, with the site pointed at it and told no name."""
    started: list[FakeVLLM] = []

    def serve(name: str, max_model_len: int = 2048, root: str = "/models/x") -> FakeVLLM:
        fake = FakeVLLM(served_model_name=name, max_model_len=max_model_len, root=root).start()
        started.append(fake)
        settings.VLLM_BASE_URL = fake.base_url
        settings.VLLM_SERVED_MODEL_NAME = ""
        settings.CHAT_CONTEXT_LENGTH = None
        vllm_client.forget_served_model()
        return fake

    yield serve
    for fake in started:
        fake.stop()
    vllm_client.forget_served_model()


async def test_the_model_and_its_context_come_from_vllm(serving):
    serving("smollm2-135m-instruct", max_model_len=8192, root=STARTER_ROOT)

    model = await vllm_client.served_model()

    assert model == ServedModel("smollm2-135m-instruct", 8192, STARTER_ROOT, live=True)
    assert model.context_length == 8192
    assert vllm_client.context_length() == 8192  # what the forms' bounds read, without asking again


async def test_a_vllm_never_heard_from_is_asked_again_at_once_not_after_the_ttl(serving):
    # A site started while vLLM loads: nothing known, so nothing to keep for SERVED_MODEL_TTL. A
    # turn with no model named, once vLLM is up, asks for its model, not for "" (vLLM's 404).
    fake = serving("first-model")
    fake.fault = "refuse"
    assert (await vllm_client.served_model()).id == ""

    fake.fault = None
    assert await vllm_client.served_model() == ServedModel("first-model", 2048, "/models/x", live=True)


async def test_what_vllm_said_is_kept_briefly_then_asked_again(serving, monkeypatch):
    fake = serving("first-model")
    assert (await vllm_client.served_model()).id == "first-model"
    fake.served_model_name = "second-model"  # vLLM restarted with another model

    assert (await vllm_client.served_model()).id == "first-model"  # within SERVED_MODEL_TTL
    monkeypatch.setattr(served_model, "SERVED_MODEL_TTL", 0.0)  # where served_model() reads it
    assert (await vllm_client.served_model()).id == "second-model"


@pytest.mark.django_db
async def test_while_vllm_is_down_the_model_it_was_last_seen_serving_is_still_its(serving, monkeypatch):
    # With no name in the settings (ask vLLM), a vLLM that went down once the note had gone stale
    # made the site assume no model: a request naming the model it served a moment ago was "no such
    # model" (404), not "vLLM is down" (503), on every door, until a question after vLLM came back.
    fake = serving("first-model", max_model_len=1024)
    assert (await vllm_client.served_model()).id == "first-model"
    fake.stop()
    monkeypatch.setattr(served_model, "SERVED_MODEL_TTL", 0.0)  # the note stale: asked again, unreachable

    assert await vllm_client.served_model() == ServedModel("first-model", 1024, "/models/x", live=False)
    chosen = await catalog.pick("first-model")  # to fail there, saying vLLM is down
    assert (chosen.model.id, chosen.endpoint) == ("first-model", default_endpoint())


async def test_a_404_from_vllm_asks_again_but_a_vllm_down_after_it_keeps_its_model(serving):
    # A 404 on an answer (vLLM restarted with another model?) forgot the model outright: if vLLM was
    # then down, every request naming it was "no such model" (404) rather than "vLLM is down" (503).
    fake = serving("first-model", max_model_len=1024)
    assert (await vllm_client.served_model()).id == "first-model"
    fake.fault = "model_not_found"
    async for _event in vllm_client.stream_chat(
        [{"role": "user", "content": "Hi"}], GenerationOptions(temperature=0.7, max_tokens=16, top_p=1.0)
    ):
        pass
    fake.stop()

    assert await vllm_client.served_model() == ServedModel("first-model", 1024, "/models/x", live=False)


async def test_while_vllm_cannot_be_asked_the_settings_are_assumed(serving, settings):
    fake = serving("qwen2-7b-instruct")
    fake.stop()
    settings.VLLM_MAX_MODEL_LEN = 4096

    model = await vllm_client.served_model()

    assert model == ServedModel("", 4096, live=False)
    assert model.display_name == "unknown model"


async def test_chat_context_length_caps_vllms_context(serving, settings):
    serving("qwen2-7b-instruct", max_model_len=8192)
    settings.CHAT_CONTEXT_LENGTH = 1024

    assert (await vllm_client.served_model()).context_length == 1024
    settings.CHAT_CONTEXT_LENGTH = 100_000  # more than vLLM has: vLLM would refuse it
    assert (await vllm_client.served_model()).context_length == 8192


async def test_a_served_name_set_in_the_settings_picks_that_model(serving, settings):
    serving("qwen2-7b-instruct")
    settings.VLLM_SERVED_MODEL_NAME = "another-name"
    vllm_client.forget_served_model()

    model = await vllm_client.served_model()

    assert (model.id, model.live) == ("another-name", False)  # vLLM does not serve it
    assert not (await vllm_client.check_health()).ok


def test_models_are_named_for_people():
    assert ServedModel("smollm2-135m-instruct", 2048, STARTER_ROOT).display_name == (
        "SmolLM2-135M-Instruct (starter model)"
    )
    assert ServedModel("qwen2-7b-instruct", 2048, "Qwen/Qwen2-7B-Instruct").display_name == "Qwen2-7B-Instruct"
    assert ServedModel("chat", 2048, "/models/Qwen2-7B-Instruct").display_name == "Qwen2-7B-Instruct"
    assert ServedModel("chat", 2048).display_name == "chat"


# --- Every door reports the model that answers ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_an_answer_records_the_model_vllm_serves_and_asks_for_it_by_that_name(serving, alice):
    fake = serving("smollm2-135m-instruct", root=STARTER_ROOT)
    conversation = await Conversation.objects.acreate(owner=alice)

    _, answer = await turns.start_turn(conversation, "What is the capital of France?")
    assert (await ended(answer)).status == Message.Status.COMPLETE
    assert (await Message.objects.aget(pk=answer.pk)).model_name == "smollm2-135m-instruct"
    assert fake.requests[-1]["model"] == "smollm2-135m-instruct"


@pytest.mark.django_db(transaction=True)
async def test_a_turn_fits_the_context_vllm_has(serving, alice):
    serving("small-context-model", max_model_len=300)
    conversation = await Conversation.objects.acreate(owner=alice, max_tokens=100)

    _, answer = await turns.start_turn(conversation, "word " * 400)
    answer = await ended(answer)

    assert answer.status == Message.Status.ERROR
    assert "too long for the model's 300-token context" in answer.error


@pytest.mark.django_db
def test_the_page_names_the_starter_model_and_how_to_run_qwen2(serving, client: Client, alice):
    serving("smollm2-135m-instruct", max_model_len=2048, root=STARTER_ROOT)
    client.force_login(alice)

    page = client.get("/").content.decode()

    assert '<span class="model-name" title="' + STARTER_ROOT + '">SmolLM2-135M-Instruct (starter model)</span>' in page
    assert "VLLM_MODEL=/path/to/Qwen2-7B-Instruct make run" in page
    fields = elements(page)
    assert (fields["max_tokens"]["min"], fields["max_tokens"]["max"]) == ("1", "2047")
    assert float(fields["temperature"]["value"] or "nan") == 0.0  # greedy: see starter.TEMPERATURE


@pytest.mark.django_db
def test_the_page_names_another_model_plainly_and_follows_its_context(serving, client: Client, alice):
    serving("qwen2-7b-instruct", max_model_len=4096, root="Qwen/Qwen2-7B-Instruct")
    client.force_login(alice)

    page = client.get("/").content.decode()

    assert ">Qwen2-7B-Instruct</span>" in page
    assert "starter model" not in page
    fields = elements(page)
    assert (fields["max_tokens"]["min"], fields["max_tokens"]["max"]) == ("1", "4095")
    assert float(fields["temperature"]["value"] or "nan") == 0.7


@pytest.mark.django_db
def test_the_page_says_when_the_model_is_not_known(serving, client: Client, alice):
    serving("qwen2-7b-instruct").stop()
    client.force_login(alice)

    assert "the model server does not answer yet" in client.get("/").content.decode()


@pytest.mark.django_db
def test_openai_models_lists_what_vllm_serves(serving, client: Client, alice):
    serving("smollm2-135m-instruct", max_model_len=2048, root=STARTER_ROOT)
    _, secret = ApiToken.issue(alice)
    auth = {"Authorization": f"Bearer {secret}"}

    listed = client.get("/v1/models", headers=auth).json()["data"]
    one = client.get("/v1/models/smollm2-135m-instruct", headers=auth)

    assert [(m["id"], m["max_model_len"]) for m in listed] == [("smollm2-135m-instruct", 2048)]
    assert one.status_code == 200 and one.json()["id"] == "smollm2-135m-instruct"
    assert client.get("/v1/models/qwen2-7b-instruct", headers=auth).status_code == 404


@pytest.mark.django_db
def test_healthz_names_the_model_for_signed_in_people(serving, client: Client, alice):
    serving("smollm2-135m-instruct", root=STARTER_ROOT)
    assert "model" not in client.get("/healthz").json()
    client.force_login(alice)

    assert client.get("/healthz").json()["model"] == "SmolLM2-135M-Instruct (starter model)"
