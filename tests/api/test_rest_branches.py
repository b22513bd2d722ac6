"""The REST API's branches: regenerate, edit, show another version, and the branch or the tree.

Over real sockets against the live site and the fake vLLM, which records what the model is sent.
"""

import httpx
import pytest

from chat.models import Conversation, Message
from tests.sse import sse_events

pytestmark = pytest.mark.django_db(transaction=True)


def sent_history(fake_vllm) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake_vllm.requests[-1]["messages"]]


def send(api: httpx.Client, conversation: int, prompt: str, fake_vllm, *reply: str, **fields) -> dict:
    fake_vllm.reply = list(reply)
    response = api.post(f"/conversations/{conversation}/messages", json={"prompt": prompt, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def two_turns(alice_api, fake_vllm) -> tuple[int, dict, dict]:
    conversation = alice_api.post("/conversations", json={"system_prompt": "Be brief."}).json()["id"]
    first = send(alice_api, conversation, "First", fake_vllm, "One.")
    second = send(alice_api, conversation, "Second", fake_vllm, "Two.")
    return conversation, first, second


def branch_of(api: httpx.Client, conversation: int, **params) -> dict:
    response = api.get(f"/conversations/{conversation}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_regenerate_answers_the_prompt_again_and_the_conversation_shows_both_versions(alice_api, fake_vllm, two_turns):
    conversation, first, second = two_turns
    fake_vllm.reply = ["Two, ", "again."]

    response = alice_api.post(
        f"/conversations/{conversation}/messages/{second['answer']['id']}/regenerate", json={"temperature": 1.5}
    )

    assert response.status_code == 200, response.text
    again = response.json()
    assert again["prompt"]["id"] == second["prompt"]["id"]
    assert again["answer"]["content"] == "Two, again."
    assert again["answer"]["parent_id"] == second["prompt"]["id"]
    assert sent_history(fake_vllm) == [
        ("system", "Be brief."),
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Second"),
    ]
    assert fake_vllm.requests[-1]["temperature"] == 1.5
    detail = branch_of(alice_api, conversation)
    assert detail["temperature"] == 1.5
    assert detail["branch_tip_id"] == again["answer"]["id"]
    assert [m["content"] for m in detail["messages"]] == ["First", "One.", "Second", "Two, again."]
    assert detail["messages"][-1]["versions"] == [second["answer"]["id"], again["answer"]["id"]]
    assert detail["messages"][0]["versions"] == [first["prompt"]["id"]]
    assert detail["tree"] is None
    tree = branch_of(alice_api, conversation, tree="true")["tree"]
    assert [m["content"] for m in tree] == ["First", "One.", "Second", "Two.", "Two, again."]

    # With no body at all: the conversation's settings as they are, the answer as JSON.
    fake_vllm.reply = ["Third", " time."]
    third = alice_api.post(f"/conversations/{conversation}/messages/{again['answer']['id']}/regenerate")
    assert third.status_code == 200, third.text
    assert third.json()["answer"]["content"] == "Third time."
    assert fake_vllm.requests[-1]["temperature"] == 1.5
    assert len(branch_of(alice_api, conversation)["messages"][-1]["versions"]) == 3


def test_edit_sends_a_new_branch_and_show_goes_back_to_the_earlier_one(alice_api, fake_vllm, two_turns):
    conversation, first, second = two_turns
    fake_vllm.reply = ["Better."]

    response = alice_api.post(
        f"/conversations/{conversation}/messages/{second['prompt']['id']}/edit", json={"prompt": " Second, better "}
    )

    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["prompt"]["content"] == "Second, better"
    assert edited["prompt"]["parent_id"] == first["answer"]["id"]
    assert sent_history(fake_vllm)[1:] == [("user", "First"), ("assistant", "One."), ("user", "Second, better")]
    detail = branch_of(alice_api, conversation)
    assert [m["content"] for m in detail["messages"]] == ["First", "One.", "Second, better", "Better."]
    assert detail["messages"][2]["versions"] == [second["prompt"]["id"], edited["prompt"]["id"]]

    shown = alice_api.post(f"/conversations/{conversation}/messages/{second['prompt']['id']}/show")

    assert shown.status_code == 200, shown.text
    assert [m["content"] for m in shown.json()["messages"]] == ["First", "One.", "Second", "Two."]
    assert branch_of(alice_api, conversation)["messages"] == shown.json()["messages"]
    # The next prompt continues the branch shown.
    send(alice_api, conversation, "Third", fake_vllm, "Three.")
    assert sent_history(fake_vllm)[1:] == [
        ("user", "First"),
        ("assistant", "One."),
        ("user", "Second"),
        ("assistant", "Two."),
        ("user", "Third"),
    ]


def test_a_prompt_can_say_which_message_it_follows(alice_api, fake_vllm, two_turns):
    conversation, first, _ = two_turns

    turn = send(alice_api, conversation, "Instead", fake_vllm, "Sure.", parent_id=first["answer"]["id"])

    assert turn["prompt"]["parent_id"] == first["answer"]["id"]
    assert sent_history(fake_vllm)[1:] == [("user", "First"), ("assistant", "One."), ("user", "Instead")]
    detail = branch_of(alice_api, conversation)
    assert [m["content"] for m in detail["messages"]] == ["First", "One.", "Instead", "Sure."]
    assert len(detail["messages"][2]["versions"]) == 2


def test_a_regenerated_answer_can_stream(alice_api, fake_vllm, two_turns):
    conversation, _, second = two_turns
    fake_vllm.reply = ["Streamed", " again."]
    url = f"/conversations/{conversation}/messages/{second['answer']['id']}/regenerate"
    with alice_api.stream("POST", url, json={"stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    assert "".join(data["text"] for name, data in events if name == "delta") == "Streamed again."
    assert events[-1][0] == "done"
    assert events[-1][1]["message_id"] == int(response.headers["X-Message-Id"])


def test_another_persons_messages_and_the_wrong_kind_of_message_are_404(alice_api, bob_api, fake_vllm, two_turns, bob):
    conversation, first, second = two_turns
    prompt, answer = second["prompt"]["id"], second["answer"]["id"]
    bobs = Conversation.objects.create(owner=bob)
    refused = [
        (bob_api, f"/conversations/{conversation}/messages/{answer}/regenerate", {}),
        (bob_api, f"/conversations/{conversation}/messages/{prompt}/edit", {"prompt": "Mine"}),
        (bob_api, f"/conversations/{conversation}/messages/{answer}/show", None),
        (bob_api, f"/conversations/{bobs.pk}/messages/{answer}/regenerate", {}),
        (bob_api, f"/conversations/{bobs.pk}/messages", {"prompt": "Hi", "parent_id": answer}),
        # A prompt is not regenerated, an answer is not edited.
        (alice_api, f"/conversations/{conversation}/messages/{prompt}/regenerate", {}),
        (alice_api, f"/conversations/{conversation}/messages/{answer}/edit", {"prompt": "x"}),
        # A message of another conversation, even one's own, is not one of this one.
        (alice_api, f"/conversations/{conversation}/messages/{first['answer']['id'] + 1000}/show", None),
    ]
    before = Message.objects.count()
    for client, url, body in refused:
        response = client.post(url, json=body)
        assert response.status_code == 404, (url, response.text)
        assert response.json() == {"detail": "Not found."}
    assert Message.objects.count() == before
    assert branch_of(alice_api, conversation)["branch_tip_id"] == answer


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("edit", {"prompt": "   "}, "prompt"),
        ("edit", {}, "prompt"),
        ("edit", {"prompt": "x", "temperature": 3}, "temperature"),
        ("regenerate", {"top_p": 0}, "top_p"),
        ("regenerate", {"temprature": 1}, "temprature"),
    ],
)
def test_bad_input_to_edit_or_regenerate_is_422_and_saves_nothing(alice_api, two_turns, route, body, field):
    conversation, _, second = two_turns
    message = second["prompt"]["id"] if route == "edit" else second["answer"]["id"]
    before = Message.objects.count()

    response = alice_api.post(f"/conversations/{conversation}/messages/{message}/{route}", json=body)

    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert Message.objects.count() == before
    assert Conversation.objects.get(pk=conversation).top_p == 0.9


def test_an_answer_that_follows_no_prompt_is_409_to_regenerate(alice_api, alice):
    conversation = Conversation.objects.create(owner=alice)
    answer = Message.objects.create(conversation=conversation, role="assistant", content="Hello, I start.")

    response = alice_api.post(f"/conversations/{conversation.pk}/messages/{answer.pk}/regenerate", json={})

    assert response.status_code == 409
    assert "nothing to answer again" in response.json()["detail"]
    assert Message.objects.count() == 1
