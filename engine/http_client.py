"""The aiohttp `ClientSession` through which the site talks to engines: one per event loop, closed
with its loop.

Every request to an engine (answers, health, /v1/models, /tokenize, /metrics, runvllm's readiness
check) goes through `request`, so each sees what the others see: the same proxy (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY), the same TLS (the system's and certifi's CAs, plus VLLM_CA_FILE), the same
connection limit (VLLM_MAX_CONNECTIONS) and the same credentials (Basic auth from the base URL's
user:password, or the endpoint's bearer key).

Why aiohttp: an answer is hundreds of tiny frames, and aiohttp reads each for about what the
hand-written client it replaces did (bench/README.md), 2.5 times less CPU than httpx. Two of its
conveniences cost more than the rest of a request and are done here instead: `trust_env` looks up
the proxy (and ~/.netrc) on a thread for every request (`proxy_for` reads the environment once per
change), and `sock_read` re-arms a timer for every frame (`Silence` reads the clock).
"""

import asyncio
import functools
import os
import socket
import ssl
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import certifi
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from django.conf import settings
from yarl import URL

from engine.endpoints import Endpoint

# RFC 8305's "Connection Attempt Delay": a host whose first address does not answer (an IPv6 route
# that black-holes) gets its next address tried this soon, not after the whole connect timeout.
HAPPY_EYEBALLS_DELAY = 0.25


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, except that a kept-alive connection that received bytes while idle is
    not given to the next request (issue 20 #11).

    An intermediary (a proxy, a load balancer) that times out an idle connection may first send an
    HTTP 408 and then hang up; aiohttp parses and queues that response, and the next request sent
    on the connection would take it as its own answer. Such a connection is closed instead.
    """

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while (connection := await super()._get(key, traces)) is not None:
            protocol = connection.protocol
            # should_close: a response queued, a parse error, an end of stream, or a message
            # left unread: anything but a clean, silent, idle connection.
            if protocol is not None and not protocol.should_close:
                return connection
            connection.close()
        return None


@functools.cache
def tls_context(ca_file: str) -> ssl.SSLContext:
    """The system's CAs, certifi's, and `ca_file`'s if given; built once, as loading CAs costs
    tens of milliseconds of CPU."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class Noted:
    """What aiohttp's tracing told of one request: whether it is waiting for a connection (the site
    holds VLLM_MAX_CONNECTIONS at most) and whether it went out on a kept-alive one; and the
    deadline for its response's head (`head_deadline`), set `head_wait` seconds on once it has a
    connection: making one is the connect timeout's business."""

    __slots__ = ("head_deadline", "head_wait", "queued", "reused")

    def __init__(self, head_deadline: asyncio.Timeout | None = None, head_wait: float = 0.0) -> None:
        self.queued = self.reused = False
        self.head_deadline, self.head_wait = head_deadline, head_wait

    def connected(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.reschedule(asyncio.get_running_loop().time() + self.head_wait)


async def _queued(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.queued = True


async def _dequeued(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.queued = False


async def _reused(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.reused = True
        noted.connected()


async def _made(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.connected()


def _tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_queued_start.append(_queued)
    tracing.on_connection_queued_end.append(_dequeued)
    tracing.on_connection_reuseconn.append(_reused)
    tracing.on_connection_create_end.append(_made)
    return tracing


def timeout(total: float | None = None, *, sock_read: bool = True) -> aiohttp.ClientTimeout:
    """The settings' timeouts as they are now (tests change them): `connect` covers waiting for one
    of the site's connections and making it; `sock_read` is the longest silence within a response
    (for a streamed answer, `Silence` keeps it instead)."""
    return aiohttp.ClientTimeout(
        total=total,
        connect=settings.VLLM_CONNECT_TIMEOUT,
        sock_connect=settings.VLLM_CONNECT_TIMEOUT,
        sock_read=settings.VLLM_READ_TIMEOUT if sock_read else None,
    )


class Silence:
    """A read timeout on a streamed response body that costs a clock read per frame: one timer,
    which, when it fires before the silence has lasted `seconds`, is set again for when it will
    have; when it has, the body's next read raises aiohttp.SocketTimeoutError, as `sock_read`'s does.
    A context manager: its timer ends with the block."""

    def __init__(self, response: aiohttp.ClientResponse, seconds: float) -> None:
        self.response, self.seconds = response, seconds
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + seconds, self._check)

    def __enter__(self) -> "Silence":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        async for chunk in self.response.content.iter_any():
            self._last = self._loop.time()
            yield chunk

    def _check(self) -> None:
        if self._loop.time() - self._last >= self.seconds:
            self.response.content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
        else:
            self._timer = self._loop.call_at(self._last + self.seconds, self._check)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "REQUEST_METHOD")


def proxy_for(scheme: str, host: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy of HTTP_PROXY or HTTPS_PROXY for a request to `host`, unless NO_PROXY leaves it
    out (as urllib, requests and aiohttp's `trust_env` read them), and its Proxy-Authorization
    header from the proxy URL's user:password; looked up again only when the variables change."""
    return _proxy_for(scheme, host, tuple(os.environ.get(name) for name in _PROXY_VARIABLES))


@functools.lru_cache(maxsize=256)
def _proxy_for(scheme: str, host: str, variables: tuple[str | None, ...]) -> tuple[str | None, dict[str, str] | None]:
    proxies = urllib.request.getproxies_environment()
    if not (found := proxies.get(scheme)) or urllib.request.proxy_bypass(host):
        return None, None
    proxy = URL(found if "://" in found else f"http://{found}")
    if proxy.user is None and proxy.password is None:
        return str(proxy), None
    credentials = aiohttp.encode_basic_auth(proxy.user or "", proxy.password or "")
    return str(proxy.with_user(None)), {"Proxy-Authorization": credentials}


def _new_session() -> aiohttp.ClientSession:
    # Each streaming answer holds one connection for as long as it streams, and vLLM queues
    # requests itself: a small cap here would make the site, not vLLM, the queue.
    connector = _Connector(
        limit=settings.VLLM_MAX_CONNECTIONS,
        limit_per_host=0,
        ssl=tls_context(settings.VLLM_CA_FILE),
        happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
        # vLLM's server (uvicorn) closes an idle connection after 5 s itself, and a connection it
        # closes just as a request goes out is asked again on a new one (vllm_client._completion);
        # this bounds the idle time where nothing closes them, under common load balancers' 60 s.
        keepalive_timeout=30.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout(),
        trace_configs=[_tracing()],
        headers={"User-Agent": "chatsite"},
        # An answer is read as it arrives; nothing the site asks for is compressed by vLLM.
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


@dataclass(frozen=True, slots=True)
class _Held:
    session: aiohttp.ClientSession
    closer: AsyncGenerator[None, None]


# A session belongs to the loop it was made on, and tests, the CLI and sync views (through
# async_to_sync) run loops of their own that end.
_held: dict[asyncio.AbstractEventLoop, _Held] = {}


async def session() -> aiohttp.ClientSession:
    """This event loop's session, made at its first use."""
    loop = asyncio.get_running_loop()
    if (held := _held.get(loop)) is not None and not held.session.closed:
        return held.session
    for other in [other for other in _held if other.is_closed()]:
        del _held[other]  # a loop closed without shutting down its async generators
    made = _new_session()
    closer = _closed_with_the_loop(loop, made)
    await anext(closer)
    _held[loop] = _Held(made, closer)
    return made


async def _closed_with_the_loop(loop: asyncio.AbstractEventLoop, made: aiohttp.ClientSession) -> AsyncGenerator[None]:
    """Closes `made` when its loop shuts down: an event loop closes the async generators begun on
    it (`loop.shutdown_asyncgens()`, which asyncio.run, asgiref's async_to_sync and pytest-asyncio
    call) before it closes, and this one waits at its `yield` until then."""
    try:
        yield
    finally:
        if (held := _held.get(loop)) is not None and held.session is made:
            del _held[loop]
        await made.close()


async def close_session() -> None:
    """Close this event loop's session now, for a loop about to end without shutting down its async
    generators."""
    if (held := _held.get(asyncio.get_running_loop())) is not None:
        await held.closer.aclose()


@dataclass(frozen=True, slots=True)
class Addressing:
    base: str  # up to /v1, without credentials
    root: str  # beside /v1 (vLLM's /health, /tokenize, /metrics), without credentials
    headers: dict[str, str] = field(repr=False)  # the Authorization header, if any: a secret
    scheme: str
    host: str


@functools.lru_cache(maxsize=64)
def addressing(endpoint: Endpoint) -> Addressing:
    """Where `endpoint` is, and its credentials: its bearer key, or else Basic auth from its URL's
    user:password (aiohttp refuses both at once)."""
    url = URL(endpoint.base_url)
    base = str(url.with_user(None)).rstrip("/")
    root = base.removesuffix("/v1")
    if endpoint.api_key:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    elif url.user is not None or url.password is not None:
        headers = {"Authorization": aiohttp.encode_basic_auth(url.user or "", url.password or "")}
    else:
        headers = {}
    return Addressing(base, root, headers, url.scheme, url.host or "")


async def request(
    method: str,
    endpoint: Endpoint,
    path: str,
    *,
    beside_v1: bool = False,
    noted: Noted | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> aiohttp.ClientResponse:
    """Send one request to `path` under the endpoint's base URL (or beside its /v1: `beside_v1`),
    with its credentials; the response once its head has arrived."""
    where = addressing(endpoint)
    proxy, proxy_headers = proxy_for(where.scheme, where.host)
    http = await session()
    return await http.request(
        method,
        (where.root if beside_v1 else where.base) + path,
        headers=where.headers | headers if headers else where.headers,
        # An engine that redirects would have the conversation sent on to whatever host it names.
        allow_redirects=False,
        proxy=proxy,
        proxy_headers=proxy_headers,
        trace_request_ctx=noted or Noted(),
        **options,
    )


def hang_up(response: aiohttp.ClientResponse) -> None:
    """Close the response's connection at once; vLLM takes a dropped connection as the end of the
    request it carried, and stops generating."""
    if (connection := response.connection) is not None and (transport := connection.transport) is not None:
        # Now, not at the loop's next turn, when asyncio would close the socket: a caller may
        # block before that (a worker shutting down), and vLLM would go on generating meanwhile.
        if (sock := transport.get_extra_info("socket")) is not None:
            # Through a duplicate of its descriptor (a shutdown is the connection's, whichever
            # descriptor asks): uvloop's stand-in for the socket has no shutdown().
            with suppress(OSError), socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
    response.close()
