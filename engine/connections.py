"""The HTTP/1.1 connections that carry streamed answers from vLLM: a small client on asyncio's own
protocol callbacks, for engine/vllm_client.py alone.

Why not httpx, which the site uses for every other request to vLLM: an answer is hundreds of tiny
frames, one every 20 ms or so per stream, and httpx spends on each what the whole relay should
(h11's event machinery, anyio's cancel scope and reader pause/resume per read, httpcore's pool
scanning every connection it holds, with a poll() each, whenever a request starts or ends). At a
few hundred streams that was most of the site's CPU (bench/README.md). Here a frame costs a
`data_received` call, a slice and a wake-up of the task reading it.

What it does: one request per connection at a time, `Content-Length` or chunked bodies (or a body
until the connection closes), TLS for https, kept-alive connections reused, at most
VLLM_MAX_CONNECTIONS connections held at once (shared with the site's other answers' requests,
see `slots`), and a read timeout that costs nothing per frame. What it does not: proxies, redirects,
HTTP/2, compression, none of which vLLM's server uses towards the site.
"""

import asyncio
import contextlib
import socket
import ssl
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

# What a connection may hold read but not yet taken before it stops reading from the socket.
HIGH_WATER = 256 * 1024
# A response head larger than this is not vLLM's.
MAX_HEAD = 64 * 1024
# Idle kept-alive connections kept per event loop; vLLM's server closes them after 5 s itself.
MAX_IDLE = 100
# How long a response read to its end ("[DONE]") may take to send its last bytes (the last chunk's
# end) before its connection is hung up on rather than used again.
END_WAIT = 10.0


class ConnectFailed(Exception):
    """No connection could be made (refused, no route, name unknown, or the connect timed out)."""


class SlotTimeout(Exception):
    """Every connection the site may hold to vLLM is in use, and none came free in time."""


class ReadTimeout(Exception):
    """Nothing arrived for the read timeout."""


class Lost(Exception):
    """The connection broke, or closed, before the response was complete."""


class BadResponse(Exception):
    """What came back is not an HTTP/1.1 response this client can read."""


# --- How many connections are held --------------------------------------------------------------


class Slots:
    """At most `limit()` connections to vLLM in use at once by this event loop's answers and the
    site's short requests; a request waits its turn, up to a timeout."""

    def __init__(self) -> None:
        self.in_use = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self, limit: int, wait: float) -> None:
        if self.in_use < limit and not self._waiting:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter  # `give_back` handed its slot to this one
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over just as the time ran out: pass it on
            raise SlotTimeout from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back()
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def give_back(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to it: in_use stays
                return
        self.in_use -= 1


_slots: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Slots]" = weakref.WeakKeyDictionary()


def slots() -> Slots:
    loop = asyncio.get_running_loop()
    if (found := _slots.get(loop)) is None:
        found = _slots[loop] = Slots()
    return found


# --- One connection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> "Origin":
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            port = None
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"{url!r} is not an http:// or https:// address")
        return cls(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Connection(asyncio.Protocol):
    """One connection, and the response being read on it.

    The body's framing (chunked or Content-Length) is undone here, as bytes arrive, so the
    connection knows by itself when a response is complete and it is free again, whether or not
    its reader read to the end.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.last_read = time.monotonic()
        self.closed = False
        self.reused = False
        self._raw = bytearray()  # received, not yet parsed
        self._body: list[bytes] = []  # parsed body bytes, not yet taken by the reader
        self._body_size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._error: Exception | None = None
        # The response: None until its head is read.
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._framing = ""  # "chunked", "length" or "close"
        self._left = 0  # bytes left of the current chunk, or of the Content-Length body
        self._chunk_state = "size"  # "size", "data", "data_end", "trailer"
        self.complete = False  # the whole response has been read
        self._keep_alive = True
        self._read_to_the_end = False
        self._release_when_complete = False
        self._waiting_for_the_end: asyncio.TimerHandle | None = None

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream's: asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        self._raw += data
        try:
            self._parse()
        except BadResponse as exc:
            self._fail(exc)
            return
        if self._release_when_complete and self.complete:
            self._release()
        elif self._body_size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self._framing == "close" and self.status is not None:
            self.complete = True
            self._keep_alive = False
        self._fail(Lost("the model server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(Lost(f"the connection to the model server broke: {exc}" if exc else "the connection closed"))

    # What the reader calls

    def send_request(self, method: str, path: str, body: bytes, accept: str) -> None:
        assert self.transport is not None
        # The silence that times out a read counts from the request: a kept-alive connection's
        # last byte may be long past.
        self.last_read = time.monotonic()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.origin.host_header}\r\nUser-Agent: chatsite\r\n"
            f"Accept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)

    async def head(self, silence: float) -> int:
        """Wait for the response's status line and headers; returns the status."""
        while self.status is None:
            await self._wait(silence)
        return self.status

    async def body(self, silence: float) -> AsyncIterator[bytes]:
        """The response body as it arrives, framing undone."""
        while True:
            if self._body:
                pieces, self._body, self._body_size = self._body, [], 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                for piece in pieces:
                    yield piece
                continue
            if self.complete:
                return
            await self._wait(silence)

    async def read_all(self, silence: float, limit: int = 1024 * 1024) -> bytes:
        whole = bytearray()
        async for piece in self.body(silence):
            whole += piece
            if len(whole) > limit:
                break
        return bytes(whole)

    def read_to_the_end(self) -> None:
        """The reader has had all it wants (vLLM's "[DONE]"): what is left of the response (the
        last chunk's end) is framing, and the connection may be used again once it has arrived."""
        self._read_to_the_end = True

    def hand_back(self) -> None:
        """Done with the response: the connection goes back to the idle ones if it can carry another
        request (now, or once the rest of a response read to its end has arrived), else it closes."""
        if self.complete:
            self._release()
        elif self._read_to_the_end and self._error is None and self._keep_alive:
            self._release_when_complete = True
            # Not for ever: it holds no slot meanwhile, so nothing else would ever close it.
            self._waiting_for_the_end = self.loop.call_later(END_WAIT, self.close)
        else:
            self.close()

    def close(self) -> None:
        """Hang up now; vLLM takes a dropped connection as the end of the request it carried."""
        self.closed = True
        if self.transport is not None:
            # Now, not at the loop's next turn, when asyncio would close the socket: a caller may
            # block before that (a worker shutting down), and vLLM would go on generating meanwhile.
            if (sock := self.transport.get_extra_info("socket")) is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.transport.abort()

    # Inside

    def _release(self) -> None:
        self._release_when_complete = self._read_to_the_end = False
        if self._waiting_for_the_end is not None:
            self._waiting_for_the_end.cancel()
            self._waiting_for_the_end = None
        # Body bytes the reader left (after "[DONE]"), or a socket paused for them: not a
        # connection to give the next request.
        if self.closed or not self._keep_alive or self._error is not None or self._body or self._paused:
            self.close()
            return
        idle = _idle.setdefault(self.loop, {}).setdefault(self.origin, deque())
        if len(idle) >= MAX_IDLE:
            self.close()
            return
        self.status, self.headers, self.complete = None, {}, False
        self._framing, self._left, self._chunk_state = "", 0, "size"
        self.reused = True
        idle.append(self)

    async def _wait(self, silence: float) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self.loop.create_future()
        # One timer per wait, set for when the silence will have lasted `silence` seconds: a frame
        # that arrives meanwhile only moves `last_read`, and the timer checks it when it fires.
        timer = self.loop.call_at(self.last_read + silence, self._check_silence, waiter, silence)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _check_silence(self, waiter: "asyncio.Future[None]", silence: float) -> None:
        if waiter.done():
            return
        if time.monotonic() - self.last_read >= silence - 0.001:
            waiter.set_exception(ReadTimeout())
        else:
            self.loop.call_at(self.last_read + silence, self._check_silence, waiter, silence)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._error is None and not self.complete:
            self._error = error
        if self in _idle.get(self.loop, {}).get(self.origin, ()):
            _idle[self.loop][self.origin].remove(self)
        if self._waiter is not None and not self._waiter.done():
            if self.complete:
                self._waiter.set_result(None)
            else:
                self._waiter.set_exception(self._error or error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _parse(self) -> None:
        raw = self._raw
        while self.status is None:  # more than once after an interim response (100 Continue)
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                if len(raw) > MAX_HEAD:
                    raise BadResponse("the response's head is too long")
                return
            self._read_head(bytes(raw[:end]))
            del raw[: end + 4]
        if self._framing == "length":
            if raw:
                taken = bytes(raw[: self._left])
                del raw[: len(taken)]
                self._left -= len(taken)
                self._take(taken)
            if self._left == 0:
                self.complete = True
        elif self._framing == "close":
            if raw:
                self._take(bytes(raw))
                raw.clear()
        else:
            self._parse_chunks(raw)
        if self.complete and raw:
            raise BadResponse("the model server sent bytes after its response")

    def _parse_chunks(self, raw: bytearray) -> None:
        while raw and not self.complete:
            if self._chunk_state == "data":
                taken = bytes(raw[: self._left])
                del raw[: len(taken)]
                self._left -= len(taken)
                self._take(taken)
                if self._left == 0:
                    self._chunk_state = "data_end"
                continue
            end = raw.find(b"\r\n")
            if end < 0:
                if len(raw) > MAX_HEAD:
                    raise BadResponse("a chunk's size line is too long")
                return
            line = bytes(raw[:end])
            del raw[: end + 2]
            if self._chunk_state == "data_end":
                if line:
                    raise BadResponse("a chunk did not end where its size said")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                digits = line.split(b";", 1)[0].strip()
                if not digits or digits.strip(b"0123456789abcdefABCDEF"):
                    raise BadResponse(f"a chunk's size is not a number: {line[:40]!r}")
                size = int(digits, 16)
                if size:
                    self._left, self._chunk_state = size, "data"
                else:
                    self._chunk_state = "trailer"
            elif not line:  # the trailer's end: the response is whole
                self.complete = True

    def _take(self, data: bytes) -> None:
        if data:
            self._body.append(data)
            self._body_size += len(data)

    def _read_head(self, head: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
            raise BadResponse(f"not an HTTP/1.1 response: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise BadResponse(f"a header line without a colon: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        if 100 <= status < 200:
            return  # an interim response (100 Continue): the real one follows
        self._keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            length = headers["content-length"]
            if not (length.isascii() and length.isdigit()):
                raise BadResponse(f"its Content-Length is not a number: {length[:20]!r}")
            self._left = int(length)
            self._framing = "length"
            self.complete = self._left == 0
        else:
            self._framing, self._keep_alive = "close", False
        # Last: a head that is refused above is no response at all.
        self.status, self.headers = status, headers


_idle: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Origin, deque[Connection]]]" = (
    weakref.WeakKeyDictionary()
)


def close_idle() -> None:
    """Hang up this event loop's idle connections, for a loop about to end (the CLI's, a test's):
    they hold their loop, and their sockets would stay open as long as the process."""
    for idle in _idle.pop(asyncio.get_running_loop(), {}).values():
        while idle:
            idle.pop().close()


async def _connect(origin: Origin, tls: ssl.SSLContext | None, within: float) -> Connection:
    loop = asyncio.get_running_loop()
    idle = _idle.get(loop, {}).get(origin)
    while idle:
        connection = idle.pop()  # the most recently used: the least likely to have been closed
        if not connection.closed and connection.transport is not None and not connection.transport.is_closing():
            return connection
    try:
        async with asyncio.timeout(within):
            transport, connection = await loop.create_connection(
                lambda: Connection(loop, origin),
                origin.host,
                origin.port,
                ssl=tls if origin.scheme == "https" else None,
                server_hostname=origin.host if origin.scheme == "https" else None,
            )
    except TimeoutError:
        raise ConnectFailed(f"no connection to {origin.host}:{origin.port} within {within:g} seconds") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConnectFailed(str(exc)) from exc
    # uvloop calls connection_made at the loop's next turn, after create_connection has returned.
    connection.transport = transport
    return connection


@contextlib.asynccontextmanager
async def post(
    url: str,
    body: bytes,
    *,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
    read_timeout: float,
    max_connections: int,
    accept: str = "text/event-stream",
) -> AsyncIterator[Connection]:
    """POST `body` (JSON) to `url`; the connection, once the response's head has arrived, for the
    block to read the body from (`connection.body(...)`).

    Holds one of `slots()` meanwhile, waiting up to `connect_timeout` for one (SlotTimeout). When
    the block ends, the connection is handed back; when it raises, is cancelled or its generator
    closed mid-response, the connection is hung up on, which is how vLLM learns to stop generating.
    """
    await slots().take(max_connections, connect_timeout)
    try:
        connection = await _request(url, body, tls, connect_timeout, read_timeout, accept)
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        connection.hand_back()
    finally:
        slots().give_back()


async def _request(
    url: str, body: bytes, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float, accept: str
) -> Connection:
    origin = Origin.of(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for attempt in range(2):
        connection = await _connect(origin, tls, connect_timeout)
        try:
            connection.send_request("POST", path, body, accept)
            await connection.head(read_timeout)
        except Lost:
            connection.close()
            # A kept-alive connection that vLLM closed just as the request went out (its idle
            # timeout): once more on a new one. A new connection that breaks is the answer.
            if connection.reused and attempt == 0:
                continue
            raise
        except BaseException:
            connection.close()
            raise
        return connection
    raise AssertionError("unreachable")
