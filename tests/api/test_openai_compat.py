"""The OpenAI-compatible endpoint, driven by the official `openai` package against the live site."""

from typing import Any

import httpx
import openai
import pytest

from chat import branches
from chat.models import Conversation, Message
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "qwen2-7b-instruct"


@pytest.fixture
def client(live_site, alice_token, fake_vllm) -> openai.OpenAI:
    # No retries: a retried 5xx would run the turn twice.
    return openai.OpenAI(base_url=f"{live_site.url}/v1", api_key=alice_token, max_retries=0, timeout=15)


def test_a_completion_answers_and_the_exchange_is_saved_in_the_callers_history(client, alice, fake_vllm):
    fake_vllm.reply = ["Local", " models", " keep", " data", " home."]

    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "Why local models?"}]},
        ],
        temperature=0.2,
        max_tokens=64,
        top_p=0.8,
        seed=7,  # not used by the site, and not refused either
    )

    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Local models keep data home."
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    sent = fake_vllm.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Why local models?"},
    ]
    assert (sent["temperature"], sent["max_tokens"], sent["top_p"]) == (0.2, 64, 0.8)
    conversation = Conversation.objects.get(owner=alice)
    assert conversation.system_prompt == "Answer in one line."
    assert conversation.title == "Why local models?"
    assert [(m.role, m.content) for m in conversation.messages.all()] == [
        ("user", "Hi"),
        ("assistant", "Hello! How can I help?"),
        ("user", "Why local models?"),
        ("assistant", "Local models keep data home."),
    ]
    answer = conversation.messages.last()
    assert answer is not None
    assert completion.id == f"chatcmpl-{answer.pk}"
    # Saved as one branch, as the page shows it and would continue it.
    assert [m.content for m, _ in branches.shown_branch(conversation)] == [
        "Hi",
        "Hello! How can I help?",
        "Why local models?",
        "Local models keep data home.",
    ]


def test_a_streamed_completion_arrives_in_chunks_then_usage(client, alice, fake_vllm):
    fake_vllm.reply = ["Stream", "ing", " works", "."]

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream please"}],
        max_completion_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming works"
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert {c.id for c in chunks} == {chunks[0].id}
    assert fake_vllm.requests[-1]["max_tokens"] == 3
    assert Message.objects.get(role="assistant", conversation__owner=alice).content == "Streaming works"


def test_a_streamed_tokens_text_is_encoded_whatever_it_holds(client, fake_vllm):
    # Each token's chunk is built around a placeholder (api/openai_compat.py): quotes, backslashes,
    # line breaks and U+2028 must come out as JSON strings all the same.
    fake_vllm.reply = ['He said "hi"', "\\", "\nnext", "\u2028", " café", "\\u0000"]

    chunks = list(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    )

    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].finish_reason is None]
    # A client that reads slower than the deltas come gets several in one chunk (chat/running_turn.py).
    assert "".join(deltas) == "".join(fake_vllm.reply)
    assert {(c.id, c.model, c.object) for c in chunks} == {(chunks[0].id, MODEL, "chat.completion.chunk")}
    assert all(c.usage is None for c in chunks)


def test_the_models_are_the_served_one(client):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_a_bad_token_is_401_in_openais_shape(live_site, fake_vllm):
    client = openai.OpenAI(base_url=f"{live_site.url}/v1", api_key="cs_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert raised.value.status_code == 401
    assert raised.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert error_of(raised.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert fake_vllm.requests == []


def test_another_model_is_404_model_not_found(client, fake_vllm):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    error = error_of(raised.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-4o" in error["message"]
    assert fake_vllm.requests == []


BAD_REQUESTS = [
    ("temperature above 2", {"temperature": 2.5}, "temperature", "Temperature must be between 0 and 2"),
    ("temperature as text", {"temperature": "hot"}, "temperature", "temperature"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens", "Max tokens must be between 1 and 2047"),
    ("max_tokens the context", {"max_tokens": 2048}, "max_tokens", "Max tokens must be between 1 and 2047"),
    ("top_p above 1", {"top_p": 1.5}, "top_p", "Top p"),
    ("no messages", {"messages": []}, "messages", "messages"),
    ("an empty prompt", {"messages": [{"role": "user", "content": "  "}]}, "messages.0.content", "Type a message"),
    ("the last message not the user's",
     {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     "messages", "The last message must be the user's"),
    ("a tool message", {"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages.0.role",
     "messages.0.role"),
    ("an image", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content", "Only text content"),
    ("two choices", {"n": 2}, "n", "n=1"),
    ("a NUL in an earlier message",
     {"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": [{"type": "text", "text": "\x00"}]},
                   {"role": "user", "content": "Hi"}]},
     "messages.1.content", "Null characters are not allowed"),
    ("a NUL in the system prompt",
     {"messages": [{"role": "system", "content": "Be brief.\x00"}, {"role": "user", "content": "Hi"}]},
     "messages.0.content", "Null characters are not allowed"),
    ("a NUL in the prompt", {"messages": [{"role": "user", "content": "a\x00b"}]}, "messages.0.content",
     "Null characters are not allowed"),
    ("stream_options not an object", {"stream": True, "stream_options": "x"}, "stream_options", "stream_options"),
    ("include_usage as text", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage", "include_usage"),
    ("no room for the answer", {"max_tokens": 2040, "messages": [{"role": "user", "content": "a b c d e f g h i"}]},
     "messages", "too long for the model's 2048-token context"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "param", "says"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_invalid_input_is_400_in_openais_shape_and_saves_nothing(client, fake_vllm, case, change, param, says):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **change}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**request)
    error = error_of(raised.value)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] in ("invalid_value", "context_length_exceeded", None)
    assert says in error["message"]
    assert fake_vllm.requests == []
    assert Conversation.objects.count() == 0


def test_a_lone_surrogate_in_an_earlier_message_is_400_in_openais_shape(live_site, alice_token, fake_vllm):
    # "\ud800" is valid JSON, but no text the database can store; the SDK cannot even send it.
    body = (
        b'{"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": "\\ud800"}, '
        b'{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]}'
    )
    headers = {"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"}

    response = httpx.post(f"{live_site.url}/v1/chat/completions", content=body, headers=headers, timeout=10)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "messages.0.content",
        "invalid_value",
    )
    assert "Unicode" in error["message"]
    assert fake_vllm.requests == []
    assert Conversation.objects.count() == 0


def test_a_body_that_is_not_json_or_too_large_is_refused_in_openais_shape(live_site, alice_token):
    headers = {"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=f"{live_site.url}/v1", headers=headers, timeout=10) as http:
        not_json = http.post("/chat/completions", content=b'{"model": ')
        too_large = http.post("/chat/completions", content=b" " * (1024 * 1024 + 1))
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]["message"]
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"


def test_vllm_down_is_503_and_the_failed_answer_is_saved(client, alice, fake_vllm):
    fake_vllm.fault = "refuse"
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=stream)
        assert raised.value.status_code == 503
        error = error_of(raised.value)
        assert error["type"] == "server_error" and "not reachable" in error["message"]
    assert Message.objects.filter(role="assistant", status=Message.Status.ERROR).count() == 2


def test_vllm_failing_is_502(client, fake_vllm):
    fake_vllm.fault = "model_not_found"
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert raised.value.status_code == 502
    assert error_of(raised.value)["code"] == "upstream_error"


def test_a_failure_mid_stream_ends_it_with_an_error_the_sdk_raises(client, fake_vllm):
    fake_vllm.reply = ["Half", " an", " answer"]
    fake_vllm.fault, fake_vllm.fault_after = "error_frame", 2
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError, match="EngineCore encountered an issue"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Half an"


def test_a_client_that_disconnects_cancels_the_upstream_request(client, alice, fake_vllm):
    fake_vllm.reply = [f" word{i}" for i in range(500)]
    fake_vllm.token_delay = 0.02

    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Go"}], stream=True)
    for _, _chunk in zip(range(5), stream, strict=False):
        pass
    stream.close()

    assert fake_vllm.wait_for_disconnect()
    answer = wait_for(lambda: Message.objects.filter(role="assistant", status=Message.Status.STOPPED).first())
    assert answer.content.startswith(" word0 word1")
    assert fake_vllm.running == 0


def test_a_client_that_gives_up_waiting_cancels_the_upstream_request(live_site, alice_token, fake_vllm):
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1
    impatient = openai.OpenAI(base_url=f"{live_site.url}/v1", api_key=alice_token, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert fake_vllm.wait_for_disconnect()
    wait_for(lambda: Message.objects.filter(role="assistant", status=Message.Status.STOPPED).exists())


# --- One SDK session, one conversation ----------------------------------------------------------
# An OpenAI client keeps the history and sends all of it on every call.


def shown(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m, _ in branches.shown_branch(conversation)]


def ask(client: openai.OpenAI, history: list[Any], *, stream: bool = False) -> str:
    """Send the history as an SDK session does, and add the answer to it, as the session would."""
    if stream:
        chunks = client.chat.completions.create(model=MODEL, messages=history, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model=MODEL, messages=history).choices[0].message.content or ""
    history.append({"role": "assistant", "content": text})
    return text


def test_a_growing_history_continues_its_conversation_rather_than_storing_it_again(client, alice, fake_vllm):
    history: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"}]
    fake_vllm.reply = ["One."]
    ask(client, history)
    history.append({"role": "user", "content": "Second?"})
    fake_vllm.reply = ["Two."]
    ask(client, history, stream=True)
    # Messages the client adds before its prompt are saved on the branch, in their place.
    history += [
        {"role": "user", "content": "An aside."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Third?"},
    ]
    fake_vllm.reply = ["Three."]
    ask(client, history)

    conversation = Conversation.objects.get(owner=alice)  # one, not three
    assert shown(conversation) == [
        ("user", "First?"),
        ("assistant", "One."),
        ("user", "Second?"),
        ("assistant", "Two."),
        ("user", "An aside."),
        ("assistant", "Noted."),
        ("user", "Third?"),
        ("assistant", "Three."),
    ]
    assert Message.objects.count() == 8  # each message once
    assert conversation.system_prompt == "Be brief."
    assert fake_vllm.requests[-1]["messages"] == history[:-1]  # the model saw the whole history


def test_a_history_that_diverges_is_a_conversation_of_its_own(client, alice, bob, bob_token, live_site, fake_vllm):
    fake_vllm.reply = ["One."]
    history: list[Any] = [{"role": "user", "content": "First?"}]
    ask(client, history)
    ask(client, [*history, {"role": "user", "content": "Second?"}])
    first = Conversation.objects.get(owner=alice)

    diverging = [
        # The first answer, not as the site gave it.
        [
            {"role": "user", "content": "First?"},
            {"role": "assistant", "content": "Uno."},
            {"role": "user", "content": "Next?"},
        ],
        # Another system prompt.
        [{"role": "system", "content": "Be long."}, *history, {"role": "user", "content": "Next?"}],
        # From the first answer again, which the session has continued past: another branch.
        [*history, {"role": "user", "content": "Second, again?"}],
    ]
    for messages in diverging:
        ask(client, messages)
    # The same history from someone else: never another person's conversation.
    bobs = openai.OpenAI(base_url=f"{live_site.url}/v1", api_key=bob_token, max_retries=0, timeout=15)
    ask(bobs, [*history, {"role": "user", "content": "Second?"}])

    assert Conversation.objects.filter(owner=alice).count() == 4
    first.refresh_from_db()
    assert shown(first) == [("user", "First?"), ("assistant", "One."), ("user", "Second?"), ("assistant", "One.")]
    bobs_conversation = Conversation.objects.get(owner=bob)
    assert shown(bobs_conversation) == shown(first)


def test_a_conversation_continued_elsewhere_meanwhile_is_not_continued(
    client, alice, alice_token, live_site, fake_vllm
):
    fake_vllm.reply = ["One."]
    history: list[Any] = [{"role": "user", "content": "First?"}]
    ask(client, history)
    conversation = Conversation.objects.get(owner=alice)
    # Alice goes on in the same conversation through the REST API: its shown branch is no longer the SDK's.
    response = httpx.post(
        f"{live_site.url}/api/conversations/{conversation.pk}/messages",
        json={"prompt": "From elsewhere"},
        headers={"Authorization": f"Bearer {alice_token}"},
        timeout=15,
    )
    assert response.status_code == 200, response.text

    ask(client, [*history, {"role": "user", "content": "Second?"}])

    assert Conversation.objects.filter(owner=alice).count() == 2
    conversation.refresh_from_db()
    assert shown(conversation) == [
        ("user", "First?"),
        ("assistant", "One."),
        ("user", "From elsewhere"),
        ("assistant", "One."),
    ]
