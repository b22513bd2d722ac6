"""The fake vLLM speaks the protocol recorded in vllm-protocol.md, so tests against it mean something."""

import json
import threading

import httpx
import pytest

from chat.context import estimate_tokens
from tests.fake_vllm import DEFAULT_REPLY, FakeVLLM, Instructed, count_tokens

MESSAGES = [{"role": "user", "content": "Say hello, please."}]


def chat_body(**overrides):
    return {"model": "qwen2-7b-instruct", "messages": MESSAGES, "max_tokens": 64, "stream": True} | overrides


def frames(text: str) -> list[str]:
    """The data of each frame, checking every frame is exactly `data: ...` and a blank line."""
    assert text.endswith("\n\n")
    blocks = text.removesuffix("\n\n").split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


def test_stream_frames_match_vllm(fake_vllm: FakeVLLM):
    response = httpx.post(
        f"{fake_vllm.base_url}/chat/completions", json=chat_body(stream_options={"include_usage": True})
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    *data, done = frames(response.text)
    assert done == "[DONE]"
    chunks = [json.loads(chunk) for chunk in data]
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": ""}
    *_, finish, usage = chunks
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {"content": ""}
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks[:-1])
    assert text == "".join(DEFAULT_REPLY)
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": count_tokens(MESSAGES),
        "total_tokens": count_tokens(MESSAGES) + len(DEFAULT_REPLY),
        "completion_tokens": len(DEFAULT_REPLY),
    }
    assert fake_vllm.requests == [chat_body(stream_options={"include_usage": True})]


def test_usage_chunk_only_when_asked_for(fake_vllm: FakeVLLM):
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body())

    chunks = [json.loads(chunk) for chunk in frames(response.text)[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


def test_stream_cut_at_max_tokens_finishes_with_length(fake_vllm: FakeVLLM):
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(max_tokens=3))

    chunks = [json.loads(chunk) for chunk in frames(response.text)[:-1]]
    texts = [chunk["choices"][0]["delta"]["content"] for chunk in chunks]
    assert "".join(texts) == "".join(DEFAULT_REPLY[:3])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_non_streaming_answer(fake_vllm: FakeVLLM):
    fake_vllm.reply = ["안녕", "�{"]
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(stream=False))

    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "안녕�{"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2


def test_echo_answers_with_what_the_turn_sent(fake_vllm: FakeVLLM):
    fake_vllm.echo = True
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "An earlier prompt"},
        {"role": "assistant", "content": "An earlier answer"},
        {"role": "user", "content": "## notes.txt\n\nThe  key is  blue.\n"},
        {"role": "user", "content": [{"type": "text", "text": "What colour is the key?"}]},
    ]
    for stream in (True, False):
        response = httpx.post(
            f"{fake_vllm.base_url}/chat/completions", json=chat_body(messages=messages, stream=stream, max_tokens=100)
        )
        if stream:
            chunks = [json.loads(chunk) for chunk in frames(response.text)[:-1]]
            text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text == "## notes.txt\n\nThe  key is  blue.\n\n\nWhat colour is the key?"
    # Off again after a reset: the set reply.
    fake_vllm.reset()
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(stream=False))
    assert response.json()["choices"][0]["message"]["content"] == "".join(DEFAULT_REPLY)


def test_ping_variant_sends_comments_and_data_without_space(fake_vllm: FakeVLLM):
    fake_vllm.fault = "ping"
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body())

    assert ": ping\r\n\r\ndata:{" in response.text
    assert "data: " not in response.text
    assert response.text.endswith("data:[DONE]\r\n\r\n")


@pytest.mark.parametrize(
    ("fault", "overrides", "status", "param", "message"),
    [
        ("context_length", {}, 400, "input_tokens", "This model's maximum context length is 2048 tokens."),
        (None, {"messages": [{"role": "user", "content": "word " * 2100}]}, 400, "input_tokens", "2048 tokens"),
        ("max_tokens", {}, 400, "max_tokens", "cannot be greater than max_model_len=2048"),
        (None, {"max_tokens": 4000}, 400, "max_tokens", "max_tokens=4000 cannot be greater than max_model_len=2048"),
        (
            None,
            {"messages": [{"role": "user", "content": "word " * 1600}], "max_tokens": 512},
            400,
            "max_tokens",
            "'max_tokens' is too large: 512.",
        ),
        (None, {"temperature": -1}, 400, "temperature", "temperature must be non-negative, got -1.0."),
        ("model_not_found", {}, 404, "model", "The model `qwen2-7b-instruct` does not exist."),
        (None, {"model": "nope"}, 404, "model", "The model `nope` does not exist. Valid aliases: qwen2-7b-instruct."),
        ("server_error", {}, 500, None, "EngineCore encountered an issue."),
    ],
)
def test_errors_before_the_stream_have_vllms_nested_body(fake_vllm, fault, overrides, status, param, message):
    fake_vllm.fault = fault
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(**overrides))

    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    assert error["param"] == param
    assert message in error["message"]
    assert error["type"] in {"BadRequestError", "NotFoundError", "InternalServerError"}


def test_body_that_is_not_json_is_a_400(fake_vllm: FakeVLLM):
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", content=b"{nope")

    assert response.status_code == 400
    assert response.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "Bad Request",
        "param": "body.1",
        "code": 400,
    }


def test_flat_error_has_the_old_shape(fake_vllm: FakeVLLM):
    fake_vllm.fault = "flat_error"
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body())

    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"object", "message", "type", "param", "code"}
    assert body["object"] == "error"
    assert "maximum context length is 2048 tokens" in body["message"]


def test_error_frame_after_a_200(fake_vllm: FakeVLLM):
    fake_vllm.fault = "error_frame"
    response = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body())

    assert response.status_code == 200
    *chunks, error, done = frames(response.text)
    assert json.loads(error)["error"]["type"] == "InternalServerError"
    assert done == "[DONE]"
    texts = [json.loads(chunk)["choices"][0]["delta"]["content"] for chunk in chunks]
    assert "".join(texts) == "".join(DEFAULT_REPLY[:2])


def test_tokenize_counts_as_usage_does_and_never_above_the_sites_estimate(fake_vllm: FakeVLLM):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Ünïcödé and\nnew lines <|im_end|> too"},
    ]
    response = httpx.post(f"{fake_vllm.root}/tokenize", json={"model": "qwen2-7b-instruct", "messages": messages})

    body = response.json()
    assert body["count"] == len(body["tokens"]) == count_tokens(messages)
    assert body["max_model_len"] == 2048
    assert body["count"] <= estimate_tokens(messages)
    assert count_tokens(MESSAGES) <= estimate_tokens(MESSAGES)  # with Qwen2's default system prompt
    assert fake_vllm.tokenize_requests == [{"model": "qwen2-7b-instruct", "messages": messages}]


def test_health_and_models(fake_vllm: FakeVLLM):
    assert httpx.get(f"{fake_vllm.root}/health").content == b""
    models = httpx.get(f"{fake_vllm.base_url}/models").json()
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [("qwen2-7b-instruct", 2048)]


def test_client_closing_mid_stream_is_recorded_and_frees_the_slot(fake_vllm: FakeVLLM):
    fake_vllm.fault = "stall"
    with httpx.Client() as client:
        with client.stream("POST", f"{fake_vllm.base_url}/chat/completions", json=chat_body()) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert fake_vllm.running == 1
            metrics = client.get(f"{fake_vllm.root}/metrics").text
            assert 'vllm:num_requests_running{engine="0",model_name="qwen2-7b-instruct"} 1.0' in metrics
            assert fake_vllm.disconnects() == 0

    assert fake_vllm.wait_for_disconnect()
    assert fake_vllm.wait_for(lambda: fake_vllm.running == 0)
    assert fake_vllm.disconnects() == 1


def test_reset_ends_a_stalled_stream_without_counting_a_disconnect(fake_vllm: FakeVLLM):
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = 0
    outcome: list[BaseException] = []

    def stream():
        try:
            httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(), timeout=10)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    assert fake_vllm.wait_for(lambda: fake_vllm.running == 1)
    fake_vllm.reset()
    thread.join()

    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    assert fake_vllm.running == 0
    assert fake_vllm.disconnects() == 0


def test_reset_lets_an_answer_a_test_left_held_go_and_end_cut_not_whole(fake_vllm: FakeVLLM):
    # A test that fails while it holds an answer on the gate leaves it to the reset: the answer must
    # end there, cut, rather than wait out the gate or finish whole into the next test's records.
    fake_vllm.reply = ["Held", " here", " and", " never", " sent."]
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = 1
    with httpx.Client() as client:
        with client.stream("POST", f"{fake_vllm.base_url}/chat/completions", json=chat_body()) as response:
            lines = response.iter_lines()
            while "Held" not in next(lines):
                pass
            fake_vllm.reset()
            assert fake_vllm.running == 0  # reset waited for the handler, which the gate no longer holds
            with pytest.raises(httpx.RemoteProtocolError):  # cut: its body never ends, no [DONE]
                list(lines)


def test_refuse_closes_the_port_and_reset_reopens_the_same_one(fake_vllm: FakeVLLM):
    with httpx.Client() as client:
        assert client.get(f"{fake_vllm.root}/health").status_code == 200
        port = fake_vllm.port
        fake_vllm.fault = "refuse"
        with pytest.raises(httpx.ConnectError):
            client.get(f"{fake_vllm.root}/health")
        fake_vllm.reset()
        assert fake_vllm.port == port
        assert client.get(f"{fake_vllm.root}/health").status_code == 200


def test_an_instructed_request_gets_its_own_answer_and_record(fake_vllm: FakeVLLM):
    fake_vllm.instructed["Name this"] = Instructed(["Sky", " colours"])
    fake_vllm.instructed["Refuse this"] = Instructed([], status=503)
    naming = {"role": "system", "content": "Name this conversation."}
    chat = {"role": "user", "content": "Why is the sky blue?"}

    named = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(messages=[naming, chat], stream=False))
    refused = httpx.post(
        f"{fake_vllm.base_url}/chat/completions",
        json=chat_body(messages=[{"role": "system", "content": "Refuse this."}, chat], stream=False),
    )
    answered = httpx.post(f"{fake_vllm.base_url}/chat/completions", json=chat_body(messages=[chat], stream=False))

    assert named.json()["choices"][0]["message"]["content"] == "Sky colours"
    assert refused.status_code == 503
    assert answered.json()["choices"][0]["message"]["content"] == "".join(DEFAULT_REPLY)
    assert [r["messages"] for r in fake_vllm.requests] == [[chat]]
    assert len(fake_vllm.instructed_requests) == 2
