"""Several engines and their models (engine/catalog.py), with fake vLLMs on loopback: which models are
offered, which engine answers, replicas sharing answers, and a replica that stops."""

import pytest
from django.db import DatabaseError

from chat import turns
from chat.models import Conversation, Message
from chat.turns import TurnEnded
from engine import catalog, vllm_client
from engine.endpoints import default_endpoint
from engine.models import Engine
from engine.vllm_client import TextDelta
from tests.fake_vllm import FakeVLLM
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


async def answered(answer: Message) -> tuple[str, Message]:
    text = ""
    async for event in turns.follow(answer):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, TurnEnded):
            return text, event.message
    raise AssertionError("the follower ended without TurnEnded")


async def start(owner, model: str, prompt: str = "Hello") -> Message:
    conversation = await Conversation.objects.acreate(owner=owner, model=model)
    return (await turns.start_turn(conversation, prompt)).answer


async def test_every_engines_models_are_offered_the_default_first(engines):
    engines("small", "smol-a")
    engines("big", "big-b")

    offers = await catalog.offered()

    assert [(offer.model.id, offer.engines, offer.available) for offer in offers] == [
        ("qwen2-7b-instruct", ("default",), True),
        ("big-b", ("big",), True),
        ("smol-a", ("small",), True),
    ]


async def test_engines_staff_added_are_offered_and_disabled_ones_are_not(fake_vllm):
    with FakeVLLM(served_model_name="smol-a") as on, FakeVLLM(served_model_name="off-c") as off:
        await Engine.objects.acreate(name="on", base_url=f"{on.base_url}/")  # a trailing slash is dropped
        await Engine.objects.acreate(name="off", base_url=off.base_url, enabled=False)

        offers = await catalog.offered()

    assert [offer.model.id for offer in offers] == ["qwen2-7b-instruct", "smol-a"]


async def test_the_default_engines_model_named_while_it_is_down_goes_to_it_not_refused(fake_vllm, settings):
    # As with no model named: the answer then fails saying vLLM is down (503), not "no such model".
    settings.VLLM_SERVED_MODEL_NAME = ""  # as `make run` has it: the site asks vLLM which model it serves
    await catalog.offered()  # the default engine has listed its model
    fake_vllm.fault = "refuse"
    catalog.mark_down(default_endpoint(), "refused")
    vllm_client.forget_served_model()  # what it served is asked again, and it does not answer

    chosen = await catalog.pick(fake_vllm.served_model_name)

    assert chosen.endpoint == default_endpoint()


async def test_a_model_named_before_the_default_engine_ever_answered_goes_to_it_not_refused(alice, fake_vllm, settings):
    # A site started while vLLM is still loading (or down) has never heard what it serves. A request
    # naming that model fails saying vLLM is down (503, the prompt kept), and once vLLM is up it is
    # answered, rather than "no such model" (404, nothing saved) until vLLM is asked again.
    settings.VLLM_SERVED_MODEL_NAME = ""  # as `make run` has it: the site asks vLLM which model it serves
    fake_vllm.fault = "refuse"

    chosen = await catalog.pick(fake_vllm.served_model_name)

    assert chosen.endpoint == default_endpoint()
    fake_vllm.fault = None  # up again, within the TTL of the question that failed
    text, ended = await answered(await start(alice, fake_vllm.served_model_name))
    assert (text, ended.status, ended.model_name) == (
        "".join(fake_vllm.reply),
        Message.Status.COMPLETE,
        fake_vllm.served_model_name,
    )


async def test_the_engines_read_before_answer_while_the_database_is_away(fake_vllm, monkeypatch):
    with FakeVLLM(served_model_name="smol-a") as added:
        await Engine.objects.acreate(name="added", base_url=added.base_url)
        assert (await catalog.pick("smol-a")).endpoint.name == "added"

        async def away():
            raise DatabaseError("the database is restarting")

        monkeypatch.setattr(catalog, "_enabled_engines", away)
        monkeypatch.setattr(catalog, "TTL", 0.0)  # every pick reads the engines again

        assert (await catalog.pick("smol-a")).endpoint.name == "added"
        assert (await catalog.pick("")).endpoint.name == "default"


async def test_a_turn_is_answered_by_the_engine_serving_the_conversations_model(alice, engines, fake_vllm):
    small = engines("small", "smol-a")
    big = engines("big", "big-b")
    big.reply = ["Big", " answer."]

    text, ended = await answered(await start(alice, "big-b"))

    assert (text, ended.status, ended.model_name) == ("Big answer.", Message.Status.COMPLETE, "big-b")
    assert [request["model"] for request in big.requests] == ["big-b"]
    assert small.requests == [] and fake_vllm.requests == []


async def test_a_conversation_without_a_model_is_answered_by_the_default_one(alice, engines, fake_vllm):
    small = engines("small", "smol-a")

    _, ended = await answered(await start(alice, ""))

    assert ended.model_name == "qwen2-7b-instruct"
    assert len(fake_vllm.requests) == 1 and small.requests == []


async def test_a_model_no_engine_serves_is_refused_with_nothing_saved(alice, engines):
    engines("small", "smol-a")
    conversation = Conversation(owner=alice, model="no-such-model")

    with pytest.raises(catalog.UnknownModel, match="no-such-model"):
        await turns.start_turn(conversation, "Hello")

    assert not await Conversation.objects.aexists()
    assert not await Message.objects.aexists()


async def test_a_model_whose_engine_is_down_is_offered_as_unavailable_and_refused(alice, engines, monkeypatch):
    monkeypatch.setattr(catalog, "TTL", 0)  # every question asks the engines again
    gone = engines("gone", "gone-model")
    assert [offer.available for offer in await catalog.offered()] == [True, True]

    gone.stop()
    offers = await catalog.offered()

    assert [(offer.model.id, offer.available) for offer in offers] == [
        ("qwen2-7b-instruct", True),
        ("gone-model", False),
    ]
    down = next(state for state in await catalog.engines() if state.endpoint.name == "gone")
    assert not down.up and "not reachable" in down.detail
    with pytest.raises(catalog.ModelUnavailable, match="not available now"):
        await turns.start_turn(Conversation(owner=alice, model="gone-model"), "Hello")


async def test_replicas_share_the_answers_fewest_in_flight_first(alice, engines):
    one = engines("one", "twin")
    two = engines("two", "twin")
    for replica in (one, two):
        replica.fault, replica.fault_after = "stall", 1  # each answer stays in flight after its first token

    answers = [await start(alice, "twin", f"Question {n}") for n in range(4)]
    await wait_for_async(lambda: one.running + two.running == 4, what="four answers streaming")

    assert (one.running, two.running) == (2, 2)
    assert {state.endpoint.name: state.in_flight for state in await catalog.engines()} == {
        "default": 0,
        "one": 2,
        "two": 2,
    }
    for answer in answers:
        await turns.stop_turn(answer)
    assert {state.endpoint.name: state.in_flight for state in await catalog.engines()}["one"] == 0


async def test_an_answer_whose_replica_stops_before_its_first_token_is_asked_of_the_other(alice, engines):
    one = engines("one", "twin")
    two = engines("two", "twin")
    one.fault, one.fault_after = "stall", 0  # no response at all yet, as in vLLM's queue
    two.reply = ["From", " two."]

    answer = await start(alice, "twin")
    await wait_for_async(lambda: one.running == 1, what="the answer waiting on the first replica")
    one.stop()
    text, ended = await answered(answer)

    assert (text, ended.status, ended.model_name) == ("From two.", Message.Status.COMPLETE, "twin")
    assert len(two.requests) == 1
    # And it is left out until it answers again.
    assert [state.up for state in await catalog.engines() if state.endpoint.name == "one"] == [False]


async def test_answers_started_after_a_replica_stopped_mid_answer_go_to_the_other(alice, engines):
    one = engines("one", "twin")
    two = engines("two", "twin")
    one.fault, one.fault_after = "stall", 1
    two.reply = ["From", " two."]

    midway = await start(alice, "twin", "First")

    async def first_token_in() -> bool:
        return (await turns.current(midway)).content == "Hello"

    # The site has the first token (the fake counting its request running is not enough: on a busy
    # machine the replica was stopped before its first delta reached the site, which then rightly
    # asked the other replica).
    await wait_for_async(first_token_in, what="the first token from the first replica")
    one.stop()
    text, ended = await answered(midway)
    # It had its first token: it ends with the text it had, explained, and is not asked again.
    assert (text, ended.status) == ("Hello", Message.Status.ERROR)
    assert ended.error

    later = [await answered(await start(alice, "twin", f"Later {n}")) for n in range(3)]

    assert [(text, ended.status) for text, ended in later] == [("From two.", Message.Status.COMPLETE)] * 3
    assert len(two.requests) == 3


async def test_an_answer_whose_replicas_are_all_down_ends_explained_after_one_retry(alice, engines):
    one = engines("one", "twin")
    two = engines("two", "twin")
    await catalog.offered()  # both seen serving it
    one.stop()
    two.stop()

    text, ended = await answered(await start(alice, "twin"))

    assert (text, ended.status) == ("", Message.Status.ERROR)
    assert "not reachable" in ended.error


async def test_an_engine_with_a_key_is_asked_with_it(alice, engines):
    # Needs the client that sends the bearer key (issue 19 §1).
    keyed = engines("keyed", "keyed-model", api_key="sk-test-key")
    keyed.reply = ["With", " key."]

    assert "keyed-model" in [offer.model.id for offer in await catalog.offered()]
    text, ended = await answered(await start(alice, "keyed-model"))

    assert (text, ended.status, ended.model_name) == ("With key.", Message.Status.COMPLETE, "keyed-model")
    assert keyed.unauthorized == 0


def test_an_entry_of_vllm_engines_that_is_no_engine_is_left_out_and_named_by_the_system_check(settings):
    settings.VLLM_ENGINES = [{"name": "x"}, "gpu2", {"name": "ok", "base_url": "http://gpu2:8000/v1/"}]

    assert [(error.id, error.msg) for error in catalog.check_configured_engines()] == [
        ("engine.E001", "VLLM_ENGINES[0] is not an engine."),
        ("engine.E001", "VLLM_ENGINES[1] is not an engine."),
    ]
    assert [(engine.name, engine.base_url) for engine in catalog.configured_engines()] == [
        ("ok", "http://gpu2:8000/v1")
    ]
