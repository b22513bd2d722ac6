"""engine/http_client.py: every request to an engine (answers, health, /v1/models) goes out the same
way — its key, Basic auth from its URL, the proxy of HTTP_PROXY, the CAs of VLLM_CA_FILE, Happy
Eyeballs — and a kept-alive connection is reused only when it is clean. Each test crosses real
sockets: the fake vLLM, a forwarding proxy, small servers of their own."""

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

from engine import http_client, vllm_client
from engine.endpoints import Endpoint
from engine.vllm_client import Failed, Finished, GenerationOptions, TextDelta, Usage
from tests.fake_vllm import DEFAULT_REPLY, FakeVLLM, count_tokens
from tests.forward_proxy import ForwardProxy
from tests.waiting import wait_for_async

MESSAGES = [{"role": "user", "content": "Say hello."}]
OPTIONS = GenerationOptions(temperature=0.7, max_tokens=64, top_p=1.0)
KEY = "sk-test-0123456789"
ANSWERED = [*(TextDelta(text) for text in DEFAULT_REPLY), Finished("stop"), Usage(count_tokens(MESSAGES), 8)]


async def collect(endpoint: Endpoint | None = None) -> list[vllm_client.Event]:
    return [event async for event in vllm_client.stream_chat(MESSAGES, OPTIONS, endpoint=endpoint)]


@pytest.fixture
def keyed_vllm(settings) -> Iterator[FakeVLLM]:
    """A fake vLLM started with --api-key KEY; the site pointed at it, without the key."""
    with FakeVLLM(api_key=KEY) as fake:
        settings.VLLM_BASE_URL = fake.base_url
        settings.VLLM_SERVED_MODEL_NAME = fake.served_model_name
        settings.VLLM_API_KEY = ""
        yield fake


# --- keys and credentials ------------------------------------------------------------------------


async def test_without_the_key_an_answer_ends_saying_the_key_is_missing(keyed_vllm: FakeVLLM):
    assert await collect() == [
        Failed(
            "The model server wants an API key (401: Unauthorized). Set VLLM_API_KEY to the key it was started with."
        )
    ]
    health = await vllm_client.check_health()
    assert not health.ok and "VLLM_API_KEY" in health.detail


async def test_a_wrong_key_is_named_as_wrong(keyed_vllm: FakeVLLM, settings):
    settings.VLLM_API_KEY = "sk-not-it"

    assert await collect() == [
        Failed("The model server refused the site's API key (401: Unauthorized). Check VLLM_API_KEY.")
    ]


async def test_with_the_key_answers_health_and_models_all_carry_it(keyed_vllm: FakeVLLM, settings):
    settings.VLLM_API_KEY = KEY

    assert await collect() == ANSWERED
    assert (await vllm_client.check_health()).ok
    models = await vllm_client.list_models(Endpoint("keyed", keyed_vllm.base_url, KEY))
    assert [model.id for model in models] == [keyed_vllm.served_model_name]  # type: ignore[union-attr]
    assert keyed_vllm.unauthorized == 0
    assert {authorization for path, authorization in keyed_vllm.authorizations if path.startswith("/v1")} == {
        f"Bearer {KEY}"
    }


async def test_basic_auth_from_the_url_goes_with_answers_health_and_models(fake_vllm: FakeVLLM, settings):
    settings.VLLM_BASE_URL = fake_vllm.base_url.replace("http://", "http://team:s%3Dcret@")

    assert await collect() == ANSWERED
    assert (await vllm_client.check_health()).ok
    assert not isinstance(await vllm_client.list_models(Endpoint("basic", settings.VLLM_BASE_URL)), Failed)

    basic = "Basic dGVhbTpzPWNyZXQ="  # team:s=cret
    assert {path for path, authorization in fake_vllm.authorizations if authorization == basic} == {
        "/v1/chat/completions",
        "/health",
        "/v1/models",
    }
    assert all(authorization == basic for _, authorization in fake_vllm.authorizations)


async def test_an_unreachable_endpoints_password_is_not_shown(settings):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.VLLM_BASE_URL = f"http://team:hunter2@127.0.0.1:{port}/v1"

    [event] = await collect()

    assert isinstance(event, Failed) and event.unreachable
    assert "hunter2" not in event.message and "team" not in event.message
    assert f"***@127.0.0.1:{port}" in event.message


# --- proxies and TLS -----------------------------------------------------------------------------


async def test_answers_health_and_models_all_go_through_http_proxy(fake_vllm: FakeVLLM, monkeypatch):
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        assert await collect() == ANSWERED
        assert (await vllm_client.check_health()).ok
        assert not isinstance(await vllm_client.list_models(Endpoint("default", fake_vllm.base_url)), Failed)

    assert set(proxy.forwarded) == {
        ("GET", f"{fake_vllm.base_url}/models"),
        ("POST", f"{fake_vllm.base_url}/chat/completions"),
        ("GET", f"{fake_vllm.root}/health"),
    }
    assert len(fake_vllm.authorizations) == len(proxy.forwarded)  # nothing reached vLLM but through it


async def test_no_proxy_leaves_the_engine_out_of_the_proxy(fake_vllm: FakeVLLM, monkeypatch):
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")

        assert await collect() == ANSWERED

    assert proxy.forwarded == []


@pytest.fixture(scope="module")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_vllm(test_ca: trustme.CA, settings, tmp_path) -> Iterator[FakeVLLM]:
    """A fake vLLM on https, its certificate signed by a CA of the test's own (in `ca.pem`)."""
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("127.0.0.1").configure_cert(server_side)
    test_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with FakeVLLM(tls=server_side) as fake:
        settings.VLLM_BASE_URL = fake.base_url
        settings.VLLM_SERVED_MODEL_NAME = fake.served_model_name
        yield fake


async def test_an_engine_whose_ca_is_not_trusted_is_explained(tls_vllm: FakeVLLM, settings):
    settings.VLLM_CA_FILE = ""

    [event] = await collect()

    assert isinstance(event, Failed) and event.unreachable
    assert event.message.startswith(f"The model server at {tls_vllm.base_url} has a TLS certificate the site does not")
    assert event.message.endswith("Set VLLM_CA_FILE to the certificate of the CA that signed it.")
    assert not (await vllm_client.check_health()).ok


async def test_vllm_ca_file_trusts_the_engines_ca_for_answers_and_health(tls_vllm: FakeVLLM, settings, tmp_path):
    settings.VLLM_CA_FILE = str(tmp_path / "ca.pem")

    assert await collect() == ANSWERED
    assert (await vllm_client.check_health()).ok


async def test_https_goes_through_the_proxys_tunnel(tls_vllm: FakeVLLM, settings, tmp_path, monkeypatch):
    settings.VLLM_CA_FILE = str(tmp_path / "ca.pem")
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        assert await collect() == ANSWERED
        assert (await vllm_client.check_health()).ok

    assert {target for _, target in proxy.forwarded} == {f"127.0.0.1:{tls_vllm.port}"}
    assert {method for method, _ in proxy.forwarded} == {"CONNECT"}


# --- connections ---------------------------------------------------------------------------------


async def test_answers_one_after_another_use_one_kept_alive_connection(fake_vllm: FakeVLLM):
    for _ in range(3):
        assert await collect() == ANSWERED

    assert fake_vllm.accepted == 1


@pytest.fixture
def black_holed_then_loopback(fake_vllm: FakeVLLM, monkeypatch) -> Iterator[str]:
    """A host name whose first address accepts no connection and never refuses one (127.0.0.2 on
    the fake's port, its accept queue full: a black hole, whatever the machine's load) and whose
    second is the fake vLLM's (127.0.0.1)."""
    port = fake_vllm.port
    listener = socket.socket()
    listener.bind(("127.0.0.2", port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.2", port))
        fillers.append(filler)
    resolve = socket.getaddrinfo

    def two_addresses(host, *args, **kwargs):
        if host != "engine.test":
            return resolve(host, *args, **kwargs)
        stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*stream, ("127.0.0.2", port)), (*stream, ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    yield f"http://engine.test:{port}/v1"
    for sock in [*fillers, listener]:
        sock.close()


async def test_an_address_that_does_not_answer_is_passed_over_soon(black_holed_then_loopback, settings):
    # RFC 8305's Happy Eyeballs: the second address is tried 0.25 s after the first, not after
    # the whole connect timeout (which here would fail the answer).
    settings.VLLM_BASE_URL = black_holed_then_loopback
    settings.VLLM_CONNECT_TIMEOUT = 20.0
    started = time.monotonic()

    events = [
        event async for event in vllm_client.stream_chat(MESSAGES, OPTIONS, model=settings.VLLM_SERVED_MODEL_NAME)
    ]

    assert events == ANSWERED
    assert time.monotonic() - started < settings.VLLM_CONNECT_TIMEOUT / 2


class _TimesOutIdleConnections:
    """A keep-alive HTTP/1.1 server on loopback that answers each request with a small JSON body,
    then, once told the connection is idle (`time_out`), sends `HTTP/1.1 408 Request Timeout` on it,
    as a proxy or load balancer that times out idle connections does (it hangs up when next read)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.time_out = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        body = b'{"data": [{"id": "m", "max_model_len": 64}]}'
        with connection, connection.makefile("rb") as requests:
            while requests.readline() not in (b"\r\n", b""):
                pass  # the request's head (a GET: no body)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            # Idle now: time it out as an intermediary would, and hang up once the next request comes.
            self.time_out.wait(30)
            connection.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            requests.readline()

    def close(self) -> None:
        self.listener.close()


async def test_an_idle_connection_that_received_a_408_is_not_read_as_the_next_answer():
    server = _TimesOutIdleConnections()
    endpoint = Endpoint("idle", f"http://127.0.0.1:{server.port}/v1")
    try:
        first = await vllm_client.list_models(endpoint)
        assert not isinstance(first, Failed)
        server.time_out.set()
        # The 408 has reached the idle connection, which still looks open: the server hangs up
        # only when it reads again. (aiohttp's pool, looked into: nothing else can tell.)
        connector = (await http_client.session()).connector
        await wait_for_async(
            lambda: any(protocol.should_close for held in connector._conns.values() for protocol, _ in held),  # type: ignore[union-attr]
            what="the 408 to arrive",
        )

        second = await vllm_client.list_models(endpoint)

        assert not isinstance(second, Failed), second
        assert [model.id for model in second] == ["m"]
    finally:
        server.close()


class _HangsUpOnReuse:
    """An HTTP/1.1 server that answers a connection's first request (a one-delta chat completion,
    its length given) and hangs up, unanswered, on its second: what vLLM's server does when its
    idle timeout ends a kept-alive connection just as the next request goes out on it."""

    BODY = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as requests:
            for served in range(2):
                length = 0
                while (line := requests.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                requests.read(length)
                self.requests += 1
                if served == 1:
                    return  # hung up, unanswered
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(self.BODY), self.BODY)
                )

    def close(self) -> None:
        self.listener.close()


async def test_an_answer_whose_kept_alive_connection_is_closed_as_it_goes_out_is_asked_again():
    server = _HangsUpOnReuse()
    endpoint = Endpoint("closing", f"http://127.0.0.1:{server.port}/v1")
    try:
        for _ in range(2):
            events = [event async for event in vllm_client.stream_chat(MESSAGES, OPTIONS, model="m", endpoint=endpoint)]
            assert events == [TextDelta("hi"), Finished("stop")]
    finally:
        server.close()

    assert (server.requests, server.connections) == (3, 2)
