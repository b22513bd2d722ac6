"""The aiohttp `ClientSession` through which the site talks to engines: one per event loop, closed
with its loop.

Every request to an engine (answers, health, /v1/models, /tokenize, /metrics, runvllm's readiness
check) goes through it, so each sees what the others see: the same proxy (HTTP_PROXY, HTTPS_PROXY,
NO_PROXY, through `trust_env`), the same TLS (the system's and certifi's CAs, plus VLLM_CA_FILE),
the same connection limit (VLLM_MAX_CONNECTIONS) and the same credentials (Basic auth from the base
URL's user:password, or the endpoint's bearer key).

Why aiohttp: an answer is hundreds of tiny frames, and aiohttp reads each for about what the
hand-written client it replaces did (bench/README.md), 2.5 times less CPU than httpx.
"""

import asyncio
import functools
import socket
import ssl
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass
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
    holds VLLM_MAX_CONNECTIONS at most) and whether it went out on a kept-alive one."""

    __slots__ = ("queued", "reused")

    def __init__(self) -> None:
        self.queued = self.reused = False


async def _queued(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.queued = True


async def _dequeued(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.queued = False


async def _reused(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    if isinstance(noted := context.trace_request_ctx, Noted):
        noted.reused = True


def _tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_queued_start.append(_queued)
    tracing.on_connection_queued_end.append(_dequeued)
    tracing.on_connection_reuseconn.append(_reused)
    return tracing


def timeout(total: float | None = None) -> aiohttp.ClientTimeout:
    """The settings' timeouts as they are now (tests change them): `connect` covers waiting for one
    of the site's connections and making it; `sock_read` is the longest silence within a response."""
    return aiohttp.ClientTimeout(
        total=total,
        connect=settings.VLLM_CONNECT_TIMEOUT,
        sock_connect=settings.VLLM_CONNECT_TIMEOUT,
        sock_read=settings.VLLM_READ_TIMEOUT,
    )


def _new_session() -> aiohttp.ClientSession:
    # Each streaming answer holds one connection for as long as it streams, and vLLM queues
    # requests itself: a small cap here would make the site, not vLLM, the queue.
    connector = _Connector(
        limit=settings.VLLM_MAX_CONNECTIONS,
        limit_per_host=0,
        ssl=tls_context(settings.VLLM_CA_FILE),
        happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
        # Under uvicorn's own 5 s (vLLM's server): a connection it may be closing is not picked.
        keepalive_timeout=4.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,
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
    headers: dict[str, str]  # the Authorization header, if any


@functools.lru_cache(maxsize=64)
def addressing(endpoint: Endpoint) -> Addressing:
    """Where `endpoint` is, and its credentials: its bearer key, or else Basic auth from its URL's
    user:password (aiohttp refuses both at once)."""
    url = URL(endpoint.base_url)
    base = str(url.with_user(None)).rstrip("/")
    root = base.removesuffix("/v1")
    if endpoint.api_key:
        return Addressing(base, root, {"Authorization": f"Bearer {endpoint.api_key}"})
    if url.user is not None or url.password is not None:
        return Addressing(base, root, {"Authorization": aiohttp.encode_basic_auth(url.user or "", url.password or "")})
    return Addressing(base, root, {})


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
    http = await session()
    return await http.request(
        method,
        (where.root if beside_v1 else where.base) + path,
        headers=where.headers | headers if headers else where.headers,
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
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    response.close()
