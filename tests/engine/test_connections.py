"""engine/connections.py: a response's framing undone however its bytes are split, and a
connection used again once its response is whole (unit tests of the protocol, and one over a
real socket to the fake vLLM)."""

import asyncio

import pytest

from engine import connections, vllm_client
from engine.vllm_client import Finished, GenerationOptions, TextDelta
from tests.fake_vllm import FakeVLLM

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"7\r\ndata: a\r\n2;ext=1\r\n\n\n\r\n"  # a chunk extension, which is ignored
    b"A\r\ndata: \xc3\xa9b\n\r\n1\r\n\n\r\n"  # "é", split across no chunk boundary
    b"0\r\n\r\n"
)
# The head and a few bytes of the first chunk.
BEGUN = CHUNKED[: CHUNKED.index(b"\r\n\r\n") + 10]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connection() -> connections.Connection:
    connection = connections.Connection(asyncio.get_running_loop(), connections.Origin("http", "vllm", 8000))
    connection.connection_made(_Transport())
    return connection


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, len(CHUNKED)])
async def test_a_chunked_body_is_whole_however_its_bytes_arrive(piece):
    connection = _connection()

    async def arrive() -> None:
        for start in range(0, len(CHUNKED), piece):
            connection.data_received(CHUNKED[start : start + piece])
            await asyncio.sleep(0)

    feeding = asyncio.create_task(arrive())
    assert await connection.head(5.0) == 200
    body = b"".join([part async for part in connection.body(5.0)])
    await feeding

    assert body == "data: a\n\ndata: éb\n\n".encode()
    assert connection.complete and connection.headers["content-type"] == "text/event-stream"


async def test_a_content_length_body_ends_at_its_length_and_bytes_after_it_close_the_connection():
    connection = _connection()
    connection.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!")
    assert await connection.head(5.0) == 404
    assert await connection.read_all(5.0) == b"nope!"
    assert not connection.closed

    late = _connection()
    late.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra")
    assert await late.head(5.0) == 200
    assert await late.read_all(5.0) == b"ok"
    assert late.closed  # whatever came after the response, the connection carries nothing more


async def test_a_connection_closed_mid_body_is_lost_not_complete():
    connection = _connection()
    connection.data_received(BEGUN)
    assert await connection.head(5.0) == 200
    connection.eof_received()

    with pytest.raises(connections.Lost):
        async for _ in connection.body(5.0):
            pass


async def test_silence_past_the_read_timeout_fails_the_read():
    connection = _connection()
    connection.data_received(BEGUN)
    await connection.head(5.0)

    with pytest.raises(connections.ReadTimeout):
        async for _ in connection.body(0.2):
            pass


async def test_a_slot_given_back_passes_to_the_one_waiting_and_a_late_one_gives_up():
    slots = connections.Slots()
    await slots.take(1, 1.0)
    waiting = asyncio.create_task(slots.take(1, 5.0))
    await asyncio.sleep(0)
    with pytest.raises(connections.SlotTimeout):
        await slots.take(1, 0.05)  # behind the first one waiting, and out of time

    slots.give_back()
    await waiting

    assert slots.in_use == 1
    slots.give_back()
    assert slots.in_use == 0


async def test_answers_one_after_another_use_one_kept_alive_connection(fake_vllm: FakeVLLM):
    options = GenerationOptions(temperature=0.7, max_tokens=64, top_p=1.0)
    messages = [{"role": "user", "content": "Hi"}]
    made = []
    original = connections.Connection.connection_made

    def noted(self, transport):
        made.append(self)
        original(self, transport)

    connections.Connection.connection_made = noted  # type: ignore[method-assign]
    try:
        for _ in range(3):
            events = [event async for event in vllm_client.stream_chat(messages, options)]
            assert isinstance(events[0], TextDelta) and Finished("stop") in events
            await asyncio.sleep(0.05)  # the last chunk's end, after "[DONE]"
    finally:
        connections.Connection.connection_made = original  # type: ignore[method-assign]

    assert len(made) == 1
    assert connections.slots().in_use == 0


async def test_an_interim_response_and_the_real_one_in_one_read_is_the_real_one():
    connection = _connection()
    connection.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    assert await connection.head(5.0) == 200
    assert await connection.read_all(5.0) == b"ok"


@pytest.mark.parametrize("length", [b"-3", b"+2", b"2_0", b"\xc2\xb2"])
async def test_a_content_length_that_is_not_digits_is_a_bad_response(length):
    connection = _connection()
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nokokokokok")

    with pytest.raises(connections.BadResponse):
        await connection.head(5.0)


async def test_a_kept_alive_connections_read_timeout_counts_from_its_new_request():
    connection = _connection()
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await connection.read_all(5.0)
    connection.hand_back()
    await asyncio.sleep(0.3)  # idle in the pool for longer than the read timeout below

    connection.send_request("POST", "/v1/chat/completions", b"{}", "text/event-stream")
    waiting = asyncio.create_task(connection.head(0.25))
    await asyncio.sleep(0.1)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    assert await waiting == 200


async def test_a_response_read_to_its_end_with_bytes_left_is_not_used_again():
    connection = _connection()
    connection.data_received(CHUNKED[: CHUNKED.index(b"0\r\n\r\n")])
    await connection.head(5.0)
    connection.read_to_the_end()  # "[DONE]": the reader takes nothing more
    connection.hand_back()
    connection.data_received(b"0\r\n\r\n")

    assert connection.closed  # its body was never taken: the next request must not be given it
