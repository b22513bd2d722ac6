"""Several engines through every door of the live site: /v1, REST and model-compose's workflow run.

The site runs in a daphne process of its own, with two engines besides the default fake vLLM given
in its environment (VLLM_ENGINES), as a deployment that keeps its configuration there does.
"""

import json
from collections.abc import Iterator

import openai
import pytest

from chat.models import Conversation
from chat.titles import NAMING_INSTRUCTION
from engine.models import Engine
from tests.fake_vllm import FakeVLLM, Instructed
from tests.site_server import SiteProcess, site_env
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULT = "qwen2-7b-instruct"


@pytest.fixture(scope="module")
def small_server() -> Iterator[FakeVLLM]:
    with FakeVLLM(served_model_name="smol-a", root="/models/Smol-A", max_model_len=1024) as fake:
        yield fake


@pytest.fixture(scope="module")
def big_server() -> Iterator[FakeVLLM]:
    with FakeVLLM(served_model_name="big-b", root="/models/Big-B", max_model_len=4096) as fake:
        yield fake


@pytest.fixture(scope="module")
def live_site(django_db_setup, django_db_blocker, fake_vllm_server, small_server, big_server):
    """The site, with the two engines beside the default one (overrides the session's `live_site`)."""
    engines = [{"name": "small", "base_url": small_server.base_url}, {"name": "big", "base_url": big_server.base_url}]
    site = SiteProcess(site_env(fake_vllm_server, VLLM_ENGINES=json.dumps(engines))).start()
    yield site
    site.stop()


@pytest.fixture
def small(small_server) -> FakeVLLM:
    small_server.reset()
    small_server.instructed[NAMING_INSTRUCTION] = Instructed([], status=503)
    small_server.reply = ["Small", " answer."]
    return small_server


@pytest.fixture
def big(big_server) -> FakeVLLM:
    big_server.reset()
    big_server.instructed[NAMING_INSTRUCTION] = Instructed([], status=503)
    big_server.reply = ["Big", " answer."]
    return big_server


@pytest.fixture
def client(live_site, alice_token, fake_vllm) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_site.url}/v1", api_key=alice_token, max_retries=0, timeout=15)


def test_v1_models_lists_every_engines_models(client, small, big):
    cards = {card.id: card for card in client.models.list().data}

    assert list(cards) == [DEFAULT, "big-b", "smol-a"]
    assert cards["smol-a"].max_model_len == 1024 and cards["big-b"].max_model_len == 4096
    assert client.models.retrieve("big-b").id == "big-b"


def test_v1_chat_completions_routes_by_model(client, small, big, fake_vllm):
    for model, text in (("big-b", "Big answer."), ("smol-a", "Small answer.")):
        completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
        assert (completion.model, completion.choices[0].message.content) == (model, text)

    assert [len(fake.requests) for fake in (fake_vllm, small, big)] == [0, 1, 1]
    assert [conversation.model for conversation in Conversation.objects.order_by("pk")] == ["big-b", "smol-a"]


def test_v1_an_unknown_model_is_model_not_found(client, small, big):
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such")

    assert refused.value.body == {
        "message": "The model 'no-such' does not exist here. Choose one of the models the site lists.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert not Conversation.objects.exists()


def test_rest_a_conversation_keeps_its_model_and_is_answered_by_it(alice_api, small, big):
    created = alice_api.post("/conversations", json={"model": "smol-a"})
    assert created.status_code == 201 and created.json()["model"] == "smol-a"
    pk = created.json()["id"]

    answered = alice_api.post(f"/conversations/{pk}/messages", json={"prompt": "Hi"}).json()
    switched = alice_api.post(f"/conversations/{pk}/messages", json={"prompt": "Again", "model": "big-b"}).json()

    assert (answered["answer"]["content"], answered["answer"]["model_name"]) == ("Small answer.", "smol-a")
    assert (switched["answer"]["content"], switched["answer"]["model_name"]) == ("Big answer.", "big-b")
    assert alice_api.get(f"/conversations/{pk}").json()["model"] == "big-b"


def test_rest_an_unknown_model_is_a_404_with_a_message(alice_api, small, big):
    pk = alice_api.post("/conversations", json={}).json()["id"]

    for response in (
        alice_api.post("/conversations", json={"model": "no-such"}),
        alice_api.patch(f"/conversations/{pk}", json={"model": "no-such"}),
        alice_api.post(f"/conversations/{pk}/messages", json={"prompt": "Hi", "model": "no-such"}),
    ):
        assert response.status_code == 404
        assert response.json() == {
            "detail": "The model 'no-such' does not exist here. Choose one of the models the site lists."
        }
    assert Conversation.objects.get().model == ""
    assert not Conversation.objects.get().messages.exists()


def test_workflow_run_takes_a_model(alice_api, small, big):
    streamed = alice_api.post("/workflows/runs", json={"input": {"prompt": "Hi", "model": "big-b"}})
    refused = alice_api.post("/workflows/runs", json={"input": {"prompt": "Hi", "model": "no-such"}})

    assert streamed.status_code == 200
    assert "".join(line.removeprefix("data: ") for line in streamed.text.split("\n\n") if line) == "Big answer."
    assert len(big.requests) == 1
    assert refused.status_code == 404 and "no-such" in refused.json()["detail"]


def test_max_tokens_is_bounded_by_the_context_of_the_model_named(alice_api, client, small, big):
    client.models.list()  # the site has asked its engines what they serve

    roomy = alice_api.post("/conversations", json={"model": "big-b", "max_tokens": 3000})
    cramped = alice_api.post("/conversations", json={"model": "smol-a", "max_tokens": 1500})
    with pytest.raises(openai.BadRequestError, match="between 1 and 1023"):
        client.chat.completions.create(model="smol-a", max_tokens=1500, messages=[{"role": "user", "content": "Hi"}])

    assert roomy.status_code == 201 and roomy.json()["max_tokens"] == 3000
    assert cramped.status_code == 422
    assert cramped.json()["detail"] == "body: Max tokens must be between 1 and 1023."


def test_an_engine_staff_add_is_offered_by_the_running_site(client, small, big):
    with FakeVLLM(served_model_name="added-model") as added:
        engine = Engine.objects.create(name="added", base_url=added.base_url)
        try:
            # Each worker reads which engines there are at most every 10 s (the admin's own worker at once).
            listed = wait_for(
                lambda: "added-model" in [card.id for card in client.models.list().data],
                within=30,
                what="the site to offer the added engine's model",
            )
            completion = client.chat.completions.create(
                model="added-model", messages=[{"role": "user", "content": "Hi"}]
            )
        finally:
            engine.delete()

    assert listed and completion.choices[0].message.content == "".join(added.reply)
