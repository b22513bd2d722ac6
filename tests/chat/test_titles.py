"""The model names a conversation after its first answer (chat/titles.py), against the fake vLLM."""

import asyncio
import threading

import pytest
from asgiref.sync import ThreadSensitiveContext
from django.urls import reverse

from chat import rules, titles, turns
from chat.models import Conversation, Message
from tests.fake_vllm import Instructed
from tests.waiting import wait_for_async

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def conversation(alice):
    return await Conversation.objects.acreate(owner=alice)


async def answer_and_naming(conversation: Conversation, prompt: str) -> Message:
    """Run a turn to its end, then wait for the naming it started, if any."""
    _, answer = await turns.start_turn(conversation, prompt)
    async for _event in turns.follow(answer):
        pass
    await titles.wait_for_name(conversation.pk)
    await conversation.arefresh_from_db()
    return answer


def naming_requests(fake_vllm) -> list[dict]:
    return [r for r in fake_vllm.instructed_requests if titles.NAMING_INSTRUCTION in str(r["messages"])]


async def test_the_model_names_the_conversation_after_its_first_answer(conversation, fake_vllm):
    fake_vllm.reply = ["Busan", " is", " lovely", " in", " spring."]
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(['"부산', " 봄", ' 여행."'])

    await answer_and_naming(conversation, "부산에 봄에 가면 어디가 좋을까요? 며칠 머물 예정입니다")

    assert conversation.title == "부산 봄 여행"
    assert not conversation.title_set_by_person
    [naming] = naming_requests(fake_vllm)
    # Small and steady, not streamed; it reads the first prompt and answer.
    assert naming["temperature"] == 0.2 and naming["max_tokens"] <= 32 and not naming.get("stream")
    assert "부산에 봄에 가면" in naming["messages"][1]["content"]
    assert "Busan is lovely in spring." in naming["messages"][1]["content"]
    # The chat request itself carries no naming instruction.
    assert titles.NAMING_INSTRUCTION not in str(fake_vllm.requests[0]["messages"])


async def test_the_answer_ends_before_the_naming_does(conversation, fake_vllm):
    naming = threading.Event()  # held until the test has seen the answer end before it
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Greetings"], gate=naming)
    _, answer = await turns.start_turn(conversation, "Hi there")

    async for event in turns.follow(answer):
        if isinstance(event, turns.TurnEnded):
            ended = event.message
    # The answer is complete and told while the model is still naming the conversation.
    assert ended.status == Message.Status.COMPLETE
    await wait_for_async(lambda: fake_vllm.running == 1, what="the naming request")
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Hi there"

    naming.set()
    await titles.wait_for_name(conversation.pk)
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Greetings"


async def test_a_title_the_person_gave_is_never_replaced(alice, fake_vllm):
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Model's name"])
    conversation = await Conversation.objects.acreate(owner=alice, title="My trip", title_set_by_person=True)

    await answer_and_naming(conversation, "Plan a trip")

    assert conversation.title == "My trip"
    assert naming_requests(fake_vllm) == []  # not even asked


async def test_a_conversation_started_through_v1_keeps_its_first_words_and_asks_the_engine_once(
    async_client, alice, alice_token, fake_vllm
):
    # An OpenAI client's one-shot call costs the engine one request, as it would without the site.
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Model's name"])
    body = {"model": fake_vllm.served_model_name, "messages": [{"role": "user", "content": "Plan a trip to Busan"}]}

    headers = {"Authorization": f"Bearer {alice_token}"}
    response = await async_client.post("/v1/chat/completions", body, content_type="application/json", headers=headers)

    assert response.status_code == 200, response.content
    conversation = await Conversation.objects.aget(owner=alice)
    # A naming would have been started before the answer's end was told, so before the response.
    await titles.wait_for_name(conversation.pk)
    assert naming_requests(fake_vllm) == []
    assert len(fake_vllm.requests) == 1
    assert conversation.title == "Plan a trip to Busan"
    # The page's own first answers are still named.
    await answer_and_naming(await Conversation.objects.acreate(owner=alice), "Plan a trip")
    assert len(naming_requests(fake_vllm)) == 1


async def test_a_rename_while_the_model_names_wins(conversation, fake_vllm):
    naming = threading.Event()  # held until the person has renamed it
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Model's name"], gate=naming)
    _, answer = await turns.start_turn(conversation, "Plan a trip")
    async for _event in turns.follow(answer):
        pass
    await wait_for_async(lambda: fake_vllm.running == 1, what="the naming request")
    # As the page's rename form and the REST API's PATCH save a person's title.
    await Conversation.objects.filter(pk=conversation.pk).aupdate(title="Mine", title_set_by_person=True)
    naming.set()

    await titles.wait_for_name(conversation.pk)

    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Mine"


@pytest.mark.parametrize(
    "instructed",
    [Instructed([], status=500), Instructed(["  \n"]), Instructed(["“…”"])],
    ids=["model-fails", "says-nothing", "only-punctuation"],
)
async def test_the_first_words_stay_when_the_model_gives_no_name(conversation, fake_vllm, instructed):
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = instructed

    await answer_and_naming(conversation, "Why is the sky blue")

    assert conversation.title == "Why is the sky blue"
    assert len(naming_requests(fake_vllm)) == 1


async def test_the_first_words_stay_when_the_model_server_is_gone(conversation, fake_vllm, settings):
    _, answer = await turns.start_turn(conversation, "Why is the sky blue")
    async for _event in turns.follow(answer):
        pass
    await conversation.arefresh_from_db()
    # Only the naming finds the server gone: a port nothing listens on.
    settings.VLLM_BASE_URL = "http://127.0.0.1:9/v1"
    titles.name_after_first_answer(await Message.objects.aget(pk=answer.pk))
    await titles.wait_for_name(conversation.pk)
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Why is the sky blue"


async def test_only_the_first_answer_names_the_conversation(conversation, fake_vllm):
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["First name"])
    await answer_and_naming(conversation, "One")
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Second name"])

    await answer_and_naming(conversation, "Two")

    assert conversation.title == "First name"
    assert len(naming_requests(fake_vllm)) == 1


async def test_a_stopped_first_answer_names_nothing(conversation, fake_vllm):
    fake_vllm.token_delay = 0.2
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["A name"])
    _, answer = await turns.start_turn(conversation, "Write a long story")
    await wait_for_async(lambda: fake_vllm.running == 1, what="the answer to start")

    await turns.stop_turn(answer)
    await asyncio.sleep(0)

    assert conversation.pk not in titles._naming
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == "Write a long story"


@pytest.mark.parametrize(
    ("said", "title"),
    [
        ('Title: "Sky colours explained."', "Sky colours explained"),
        ("제목: 「하늘이 파란 이유」", "하늘이 파란 이유"),
        ("**Rayleigh scattering**\nThis conversation is about light.", "Rayleigh scattering"),
        ("word " * 40, ("word " * 40)[: rules.AUTO_TITLE_LENGTH].rstrip()),
    ],
)
def test_the_models_words_become_a_tidy_title(said, title):
    assert rules.title_from_model(said) == title
    assert len(rules.title_from_model(said)) <= rules.AUTO_TITLE_LENGTH


async def test_the_sidebar_item_comes_back_named_once_the_model_has_named_it(async_client, alice, fake_vllm):
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Sky colours"], delay=0.5)
    # The answer is held before its last word: still streaming when the page is drawn.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 1
    await async_client.aforce_login(alice)
    response = await async_client.post(
        reverse("chat:send-new"), {"prompt": "Why is the sky blue"}, headers={"HX-Request": "true"}
    )
    conversation = await Conversation.objects.aget(owner=alice)
    # The new conversation's sidebar item asks for its name once the page says the answer is done.
    assert f'hx-get="{reverse("chat:title", args=[conversation.pk])}"' in response.content.decode()
    assert 'hx-trigger="chat:answered from:body"' in response.content.decode()
    answer = await Message.objects.aget(conversation=conversation, role=Message.Role.ASSISTANT)
    fake_vllm.delta_gate.set()
    async for _event in turns.follow(answer):
        pass

    # A request of its own, as daphne serves each (Django's test client does not): its sync parts
    # (the middleware) must not hold the thread the naming's database writes need.
    async with ThreadSensitiveContext():
        item = await async_client.get(reverse("chat:title", args=[conversation.pk]), headers={"HX-Request": "true"})

    assert item.status_code == 200
    html = item.content.decode()
    assert ">Sky colours</a>" in html
    assert "hx-get" not in html  # asked once


async def test_an_answer_ended_before_the_page_was_drawn_has_its_name_asked_for_at_once(
    async_client, alice, fake_vllm, monkeypatch
):
    # A fast answer (or a failure) may end before the send's page is drawn: it comes whole, with no
    # stream to say it has ended, and the sidebar item must not wait for that word.
    fake_vllm.instructed[titles.NAMING_INSTRUCTION] = Instructed(["Sky colours"])
    start_turn = turns.start_turn

    async def ended_at_once(*args, **kwargs):
        turn = await start_turn(*args, **kwargs)
        async for _event in turns.follow(turn.answer):
            pass
        return turn

    monkeypatch.setattr(turns, "start_turn", ended_at_once)
    await async_client.aforce_login(alice)
    response = await async_client.post(
        reverse("chat:send-new"), {"prompt": "Why is the sky blue"}, headers={"HX-Request": "true"}
    )

    html = response.content.decode()
    conversation = await Conversation.objects.aget(owner=alice)
    assert "data-stream-url" not in html  # drawn whole
    assert f'hx-get="{reverse("chat:title", args=[conversation.pk])}" hx-trigger="load"' in html


async def test_a_second_turn_does_not_ask_for_a_name(async_client, alice, fake_vllm):
    conversation = await Conversation.objects.acreate(owner=alice, title="Old")
    await Message.objects.acreate(conversation=conversation, role=Message.Role.USER, content="Hi")
    await Message.objects.acreate(conversation=conversation, role=Message.Role.ASSISTANT, content="Hello")
    await async_client.aforce_login(alice)

    response = await async_client.post(
        reverse("chat:send", args=[conversation.pk]), {"prompt": "Again"}, headers={"HX-Request": "true"}
    )

    assert "chat:answered" not in response.content.decode()
    answer = await Message.objects.filter(conversation=conversation).alatest("pk")
    async for _event in turns.follow(answer):
        pass


async def test_another_persons_conversation_title_is_404(async_client, alice, bob):
    conversation = await Conversation.objects.acreate(owner=alice, title="Alice's")
    await async_client.aforce_login(bob)
    response = await async_client.get(reverse("chat:title", args=[conversation.pk]))
    assert response.status_code == 404


def test_renaming_on_the_page_or_by_the_api_marks_the_title_as_the_persons(client, alice):
    conversation = Conversation.objects.create(owner=alice, title="From the prompt")
    client.force_login(alice)
    client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "Mine"})
    conversation.refresh_from_db()
    assert (conversation.title, conversation.title_set_by_person) == ("Mine", True)


def test_a_title_given_through_the_api_is_the_persons(client, alice_token):
    auth = {"Authorization": f"Bearer {alice_token}"}
    named = client.post("/api/conversations", {"title": "Given"}, content_type="application/json", headers=auth)
    untitled = client.post("/api/conversations", {}, content_type="application/json", headers=auth)
    assert Conversation.objects.get(pk=named.json()["id"]).title_set_by_person
    assert not Conversation.objects.get(pk=untitled.json()["id"]).title_set_by_person

    client.patch(
        f"/api/conversations/{untitled.json()['id']}", {"title": "Later"}, content_type="application/json", headers=auth
    )

    assert Conversation.objects.get(pk=untitled.json()["id"]).title_set_by_person
