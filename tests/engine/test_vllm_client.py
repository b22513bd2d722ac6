"""engine.vllm_client turns whatever vLLM sends, over a real socket, into typed events with readable failures."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine import sse_frames, vllm_client
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage
from tests.fake_vllm import DEFAULT_REPLY, ENGINE_FAILURE, FakeVLLM, count_tokens
from tests.waiting import wait_for_async

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
OPTIONS = GenerationOptions(temperature=0.7, max_tokens=64, top_p=0.9)


async def collect(messages=MESSAGES, options=OPTIONS) -> list[vllm_client.Event]:
    return [event async for event in vllm_client.stream_chat(messages, options)]


def answer(reply) -> list[TextDelta]:
    return [TextDelta(text) for text in reply if text]


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose accept queue is full: a connect there neither succeeds nor is refused."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


# --- a complete answer -----------------------------------------------------------------------------


async def test_a_complete_answer_is_deltas_then_finish_then_usage(fake_vllm: FakeVLLM):
    events = await collect()

    # The role-only first chunk and the empty-content chunks yield nothing; [DONE] ends the stream.
    assert events == [*answer(DEFAULT_REPLY), Finished("stop"), Usage(count_tokens(MESSAGES), len(DEFAULT_REPLY))]
    assert fake_vllm.requests == [
        {
            "model": "qwen2-7b-instruct",
            "messages": MESSAGES,
            "temperature": 0.7,
            "max_tokens": 64,
            "top_p": 0.9,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ]


async def test_an_answer_cut_at_max_tokens_finishes_with_length(fake_vllm: FakeVLLM):
    events = await collect(options=GenerationOptions(temperature=0.7, max_tokens=3, top_p=1.0))

    assert events == [*answer(DEFAULT_REPLY[:3]), Finished("length"), Usage(count_tokens(MESSAGES), 3)]


async def test_empty_deltas_yield_no_events(fake_vllm: FakeVLLM):
    fake_vllm.reply = ["", "One", "", "", " two", ""]

    events = await collect()

    assert events[:3] == [TextDelta("One"), TextDelta(" two"), Finished("stop")]
    assert events[3] == Usage(count_tokens(MESSAGES), 6)


async def test_deltas_pass_through_as_opaque_text(fake_vllm: FakeVLLM):
    # A byte-level tokenizer can split a character: vLLM then sends U+FFFD, which must not be "fixed".
    fake_vllm.reply = ["안녡", "�{", " \n", "  data: [DONE]", "\n\n"]

    events = await collect()

    assert events[:-2] == answer(fake_vllm.reply)


async def test_comments_and_data_without_its_space_are_understood(fake_vllm: FakeVLLM):
    fake_vllm.fault = "ping"

    events = await collect()

    assert events == [*answer(DEFAULT_REPLY), Finished("stop"), Usage(count_tokens(MESSAGES), len(DEFAULT_REPLY))]


async def test_unicode_line_separators_inside_a_delta_are_text(fake_vllm: FakeVLLM):
    # JSON leaves U+2028, U+2029 and U+0085 unescaped, and vLLM's JSON is not ASCII-escaped: SSE
    # ends a line only at CR, LF or CRLF, where str.splitlines also ends one at these.
    fake_vllm.reply = ["one\u2028two", "\u2029three", "four\x85", "\x0b\x0c\x1c\x1d\x1e five"]

    events = await collect()

    assert events[:-2] == answer(fake_vllm.reply)
    assert events[-2] == Finished("stop")


@pytest.mark.parametrize("line_end", ["\r", "\r\n"])
async def test_lines_ended_by_cr_or_crlf_are_understood(fake_vllm: FakeVLLM, line_end):
    fake_vllm.line_end = line_end

    events = await collect()

    assert events == [*answer(DEFAULT_REPLY), Finished("stop"), Usage(count_tokens(MESSAGES), len(DEFAULT_REPLY))]


async def test_a_crlf_split_between_two_reads_is_one_line_end():
    pieces = [b'data: {"a": 1}\r', b"\n\r", b"\ndata: two\r", b"\r", b"data: three\r", b"\n", b"\n", b"data: last"]

    async def body():
        for piece in pieces:
            yield piece

    assert [data async for data in sse_frames._sse_data(body())] == [b'{"a": 1}', b"two", b"three", b"last"]


async def test_a_bad_byte_is_the_replacement_character_and_a_split_character_stays_whole():
    pieces = [b'data: "a\xffb \xe2\x80', b'\xa8 c"\n\n']  # "\xe2\x80\xa8" is U+2028, across two reads

    async def body():
        for piece in pieces:
            yield piece

    assert [sse_frames._json(data) async for data in sse_frames._sse_data(body())] == ["a\ufffdb \u2028 c"]


def test_a_frame_is_json_whatever_its_strings_hold():
    # orjson refuses a lone surrogate's escape and bytes that are not UTF-8; json reads them as before.
    assert sse_frames._json(b'{"t": "\\ud83d\\ude00 \\u0000"}') == {"t": "\U0001f600 \x00"}
    assert sse_frames._json(b'{"t": "\\ud800"}') == {"t": "\ud800"}
    assert sse_frames._json(b'{"t": "\xff"}') == {"t": "\ufffd"}
    with pytest.raises(ValueError):
        sse_frames._json(b"{not json")


async def test_text_no_database_can_store_becomes_the_replacement_character(fake_vllm: FakeVLLM):
    # "\ud800" is valid JSON but no UTF-8 text, and PostgreSQL refuses NUL: neither may reach the turn.
    fake_vllm.reply = ["before ", "\ud800", " a\x00b", " \ud83d\ude00 after"]

    events = await collect()

    assert events[:-2] == answer(["before ", "\ufffd", " a\ufffdb", " \U0001f600 after"])


# --- failures after the 200 ------------------------------------------------------------------------


async def test_an_error_frame_after_the_200_fails_after_the_text_so_far(fake_vllm: FakeVLLM):
    fake_vllm.fault = "error_frame"
    fake_vllm.fault_after = 3

    events = await collect()

    assert events == [
        *answer(DEFAULT_REPLY[:3]),
        Failed(f"The model server failed while answering: {ENGINE_FAILURE}"),
    ]


async def test_a_stream_that_ends_without_finishing_fails(fake_vllm: FakeVLLM):
    fake_vllm.fault = "no_done"

    events = await collect()

    assert events == [
        *answer(DEFAULT_REPLY),
        Failed("The connection to the model server closed before the answer was complete."),
    ]


@pytest.mark.parametrize("fault_after", [0, 2])
async def test_a_dropped_connection_fails(fake_vllm: FakeVLLM, fault_after):
    fake_vllm.fault = "drop"
    fake_vllm.fault_after = fault_after

    events = await collect()

    # Nothing from the model yet: the answer may be asked of another replica.
    assert events == [
        *answer(DEFAULT_REPLY[:fault_after]),
        Failed("The connection to the model server was lost before the answer was complete.", fault_after == 0),
    ]


@pytest.mark.parametrize("fault_after", [0, 2])
async def test_a_stalled_stream_fails_after_the_read_timeout_and_hangs_up(fake_vllm: FakeVLLM, settings, fault_after):
    settings.VLLM_READ_TIMEOUT = 0.3
    fake_vllm.fault = "stall"
    fake_vllm.fault_after = fault_after

    events = await collect()

    assert events == [
        *answer(DEFAULT_REPLY[:fault_after]),
        Failed("The model server did not answer within 0.3 seconds."),
    ]
    assert fake_vllm.wait_for_disconnect()


async def test_the_read_timeout_follows_settings_after_the_client_exists(fake_vllm: FakeVLLM, settings):
    assert (await vllm_client.check_health()).ok  # the pooled client for this event loop now exists
    settings.VLLM_READ_TIMEOUT = 0.3
    fake_vllm.fault = "stall"

    events = await asyncio.wait_for(collect(), timeout=10)

    assert events[-1] == Failed("The model server did not answer within 0.3 seconds.")


# --- failures before the stream --------------------------------------------------------------------

LONG = [{"role": "user", "content": "word " * 2100}]
LONGISH = [{"role": "user", "content": "word " * 1600}]


TOO_LONG = (
    "This conversation is too long for the model's 2048-token context. Start a new conversation or shorten the message."
)
TOO_MANY_TOKENS = "Max tokens is larger than the model's 2048-token context allows. Ask for fewer tokens."
NO_ROOM_FOR_ANSWER = (
    "This conversation and a 512-token answer do not fit the model's 2048-token context. "
    "Ask for fewer tokens or start a new conversation."
)


@pytest.mark.parametrize(
    ("fault", "messages", "max_tokens", "message"),
    [
        ("context_length", MESSAGES, 64, TOO_LONG),
        (None, LONG, 64, TOO_LONG),
        # The flat error body of vLLM before 0.10.1, whose "param" is null.
        ("flat_error", MESSAGES, 64, TOO_LONG),
        ("max_tokens", MESSAGES, 64, TOO_MANY_TOKENS),
        (None, MESSAGES, 4000, TOO_MANY_TOKENS),
        (None, LONGISH, 512, NO_ROOM_FOR_ANSWER),
        ("server_error", MESSAGES, 64, f"The model server failed (500): {ENGINE_FAILURE}"),
    ],
)
async def test_an_http_error_before_the_stream_is_one_readable_failure(
    fake_vllm: FakeVLLM, fault, messages, max_tokens, message
):
    fake_vllm.fault = fault

    events = await collect(messages, GenerationOptions(temperature=0.7, max_tokens=max_tokens, top_p=1.0))

    assert events == [Failed(message)]


async def test_a_refused_option_is_explained_with_vllms_words(fake_vllm: FakeVLLM):
    events = await collect(options=GenerationOptions(temperature=-1, max_tokens=64, top_p=1.0))

    assert events == [
        Failed(
            "The model server refused the request (400): temperature must be non-negative, got -1.0. "
            "(parameter=temperature, value=-1.0)"
        )
    ]


@pytest.mark.parametrize("fault", [None, "model_not_found"])
async def test_an_unknown_model_name_points_at_the_setting(fake_vllm: FakeVLLM, settings, fault):
    settings.VLLM_SERVED_MODEL_NAME = "nope" if fault is None else "qwen2-7b-instruct"
    fake_vllm.fault = fault

    [event] = await collect()

    assert isinstance(event, Failed)
    assert event.message.startswith(
        f"The model server does not serve a model named {settings.VLLM_SERVED_MODEL_NAME!r}"
    )
    assert "does not exist" in event.message
    assert event.message.endswith("Check VLLM_SERVED_MODEL_NAME.")


async def test_a_server_that_is_not_running_is_explained(fake_vllm: FakeVLLM):
    fake_vllm.fault = "refuse"

    events = await collect()

    assert events == [
        Failed(
            f"The model server is not reachable at {fake_vllm.base_url}. "
            "Start it with `python manage.py runvllm` (or check VLLM_BASE_URL).",
            unreachable=True,
        )
    ]


async def test_a_connect_timeout_is_unreachable_not_slow(settings, unaccepting_port):
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{unaccepting_port}/v1"
    settings.VLLM_CONNECT_TIMEOUT = 0.2

    [event] = await collect()

    assert event == Failed(
        f"The model server is not reachable at {settings.VLLM_BASE_URL}. "
        "Start it with `python manage.py runvllm` (or check VLLM_BASE_URL).",
        unreachable=True,
    )


# --- hanging up ------------------------------------------------------------------------------------


async def test_closing_the_stream_mid_answer_hangs_up_on_vllm(fake_vllm: FakeVLLM):
    fake_vllm.reply = [f" w{i}" for i in range(100)]
    fake_vllm.token_delay = 0.05
    stream = vllm_client.stream_chat(MESSAGES, OPTIONS)

    assert await anext(stream) == TextDelta(" w0")
    await stream.aclose()

    assert fake_vllm.wait_for_disconnect()
    assert fake_vllm.wait_for(lambda: fake_vllm.running == 0)


async def test_cancelling_the_task_reading_the_stream_hangs_up_on_vllm(fake_vllm: FakeVLLM):
    fake_vllm.fault = "stall"
    first_delta = asyncio.Event()

    async def read():
        async for event in vllm_client.stream_chat(MESSAGES, OPTIONS):
            if isinstance(event, TextDelta):
                first_delta.set()

    task = asyncio.create_task(read())
    await first_delta.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert fake_vllm.wait_for_disconnect()
    assert fake_vllm.wait_for(lambda: fake_vllm.running == 0)


async def test_more_answers_than_the_site_may_stream_at_once_says_so(fake_vllm: FakeVLLM, settings):
    # One connection allowed, and it is held by an answer that streams on; the next answer waits
    # VLLM_CONNECT_TIMEOUT for a connection, then says why it got none (not "vLLM did not answer").
    settings.VLLM_MAX_CONNECTIONS = 1
    settings.VLLM_CONNECT_TIMEOUT = 0.3
    fake_vllm.fault = "stall"
    first = vllm_client.stream_chat(MESSAGES, OPTIONS)
    assert isinstance(await anext(first), TextDelta)

    events = await asyncio.wait_for(collect(), timeout=10)

    most = "The site is already streaming 1 answers from the model server, its most at once."
    assert events == [Failed(f"{most} Try again in a moment.")]
    await first.aclose()


async def test_every_way_an_answer_ends_gives_its_connection_back(fake_vllm: FakeVLLM, settings):
    # One connection allowed: each answer below must hand it back when it ends, however it ends,
    # or the next one waits for it and fails (bench/README.md: after a load, every new turn failed).
    settings.VLLM_MAX_CONNECTIONS = 1
    settings.VLLM_CONNECT_TIMEOUT = 0.5

    assert (await collect())[-1] == Usage(count_tokens(MESSAGES), len(DEFAULT_REPLY))  # read to the end
    closed = vllm_client.stream_chat(MESSAGES, OPTIONS)
    assert isinstance(await anext(closed), TextDelta)
    await closed.aclose()  # a follower that stops the answer
    fake_vllm.fault = "server_error"
    assert isinstance((await collect())[-1], Failed)  # refused by vLLM
    fake_vllm.fault, fake_vllm.fault_after = "stall", 1

    async def until_cancelled() -> None:
        async for _ in vllm_client.stream_chat(MESSAGES, OPTIONS):
            pass

    task = asyncio.ensure_future(until_cancelled())  # a turn's task, cancelled mid-answer
    await wait_for_async(lambda: fake_vllm.running == 1, 5, "the answer to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake_vllm.fault = None

    assert await asyncio.wait_for(collect(), timeout=10) == [
        *answer(DEFAULT_REPLY),
        Finished("stop"),
        Usage(count_tokens(MESSAGES), len(DEFAULT_REPLY)),
    ]


async def test_a_short_request_past_the_connection_limit_says_so(fake_vllm: FakeVLLM, settings):
    # The site's own small requests (naming a conversation) share the pool with the answers.
    settings.VLLM_MAX_CONNECTIONS = 1
    settings.VLLM_CONNECT_TIMEOUT = 0.3
    fake_vllm.fault = "stall"
    first = vllm_client.stream_chat(MESSAGES, OPTIONS)
    assert isinstance(await anext(first), TextDelta)

    named = await asyncio.wait_for(vllm_client.complete(MESSAGES, OPTIONS), timeout=10)

    most = "The site is already streaming 1 answers from the model server, its most at once."
    assert named == Failed(f"{most} Try again in a moment.")
    await first.aclose()


# --- health and token counts -----------------------------------------------------------------------


async def test_health_is_ok_when_vllm_serves_the_configured_model(fake_vllm: FakeVLLM):
    assert await vllm_client.check_health() == vllm_client.Health(True, "vLLM serves qwen2-7b-instruct")


async def test_health_names_the_models_served_when_the_name_is_wrong(fake_vllm: FakeVLLM, settings):
    settings.VLLM_SERVED_MODEL_NAME = "nope"

    assert await vllm_client.check_health() == vllm_client.Health(
        False, "vLLM serves ['qwen2-7b-instruct'], not 'nope'"
    )


async def test_health_when_vllm_is_down(fake_vllm: FakeVLLM):
    fake_vllm.fault = "refuse"

    health = await vllm_client.check_health()

    assert not health.ok
    assert health.detail.startswith(f"The model server is not reachable at {fake_vllm.base_url}.")


async def test_health_when_the_engine_is_dead(fake_vllm: FakeVLLM):
    fake_vllm.fault = "server_error"

    assert await vllm_client.check_health() == vllm_client.Health(False, "vLLM answers /health with 503")


async def test_count_prompt_tokens_is_vllms_exact_count(fake_vllm: FakeVLLM):
    assert await vllm_client.count_prompt_tokens(MESSAGES) == count_tokens(MESSAGES)
    assert fake_vllm.tokenize_requests == [{"model": "qwen2-7b-instruct", "messages": MESSAGES}]


@pytest.mark.parametrize("fault", ["refuse", "model_not_found"])
async def test_count_prompt_tokens_is_none_when_vllm_cannot_tell(fake_vllm: FakeVLLM, settings, fault):
    if fault == "model_not_found":
        settings.VLLM_SERVED_MODEL_NAME = "nope"
    else:
        fake_vllm.fault = fault

    assert await vllm_client.count_prompt_tokens(MESSAGES) is None


async def test_health_tries_again_when_vllm_hangs_up_without_an_answer(settings):
    # What a kept-alive connection does when vLLM closes it as the request goes out (a restart,
    # or the fake vLLM's reset between tests): no answer at all, on the first request only.
    hung_up: list[str] = []

    class HangsUpOnce(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not hung_up:
                hung_up.append(self.path)
                self.close_connection = True
                return
            body = b'{"data": [{"id": "qwen2-7b-instruct"}]}' if self.path == "/v1/models" else b""
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), HangsUpOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{server.server_address[1]}/v1"
    settings.VLLM_SERVED_MODEL_NAME = ""
    try:
        assert await vllm_client.check_health() == vllm_client.Health(True, "vLLM serves qwen2-7b-instruct")
        assert hung_up == ["/health"]
    finally:
        server.shutdown()
        server.server_close()
        vllm_client.forget_served_model()


async def test_a_burst_of_turns_asks_vllm_which_model_once(settings):
    # Every turn asks which model vLLM serves; when the note is stale, a burst of them must not
    # each ask (each with a client of its own: a fifth of the site's CPU in bench/README.md's
    # profile of a 100-stream burst).
    asked: list[str] = []

    class SlowModels(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            time.sleep(0.3)  # long enough for the whole burst to find the note stale
            body = b'{"data": [{"id": "qwen2-7b-instruct", "max_model_len": 4096}]}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{server.server_address[1]}/v1"
    settings.VLLM_SERVED_MODEL_NAME = ""
    vllm_client.forget_served_model()
    try:
        first = asyncio.ensure_future(vllm_client.served_model())
        await asyncio.sleep(0.05)
        first.cancel()  # a client that leaves does not cancel the others' question
        models = await asyncio.gather(*(vllm_client.served_model() for _ in range(50)))
        assert asked == ["/v1/models"]
        assert {model.id for model in models} == {"qwen2-7b-instruct"}
        assert all(model.live and model.max_model_len == 4096 for model in models)
    finally:
        server.shutdown()
        server.server_close()
        vllm_client.forget_served_model()
