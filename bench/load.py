"""The load generator: one process, one event loop, raw asyncio sockets (no HTTP library per token).

Given a door and a load (a burst of N streams started at the same instant, or steady arrivals at a
rate for some seconds), it runs the streams and prints one JSON object: the figures named as
`vllm bench serve` names them (TTFT, TPOT, ITL, E2EL), what the site added to them, the tokens
received per second, and this process's own CPU time, so a reader can see it was not the
bottleneck.

What the site added is read from the tokens themselves (bench/fake.py stamps each with the time
it sent it, on the clock every process here shares):
- added TTFT = the client's TTFT minus the fake's own (its first token's send time minus the
  request's arrival at the fake), so the fake's decode step is not counted;
- token delay = when a token arrived at the client minus when the fake sent it;
- added ITL = the client's gap between two tokens minus the fake's gap between sending them.
Tokens a door merges into one event count each, with the receive time of that event.

    python -m bench.load '<spec as JSON>'     (bench/run.py writes the spec)
"""

import asyncio
import json
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

STAMP = re.compile(rb"@(\d+)(?:/(\d+))?")
STREAM_URL = re.compile(rb'data-stream-url="([^"]+)"')
MODEL = "qwen2-7b-instruct"


class Refused(Exception):
    """The site answered with something other than a stream."""


@dataclass
class Stream:
    started: float = 0.0  # monotonic seconds
    first: float | None = None
    last: float = 0.0
    fake_ttft: float = 0.0
    tokens: int = 0
    last_sent: float = 0.0
    last_received: float = 0.0
    gaps: list[float] = field(default_factory=list)
    added_gaps: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    error: str | None = None

    def take(self, data: bytes, received: float) -> None:
        for match in STAMP.finditer(data):
            sent = int(match[1] if match[2] is None else match[2]) / 1e6
            if sent <= self.last_sent:
                continue  # seen already (a door that repeats text)
            if self.first is None:
                self.first = received
                if match[2] is not None:
                    self.fake_ttft = sent - int(match[1]) / 1e6
            else:
                self.gaps.append(received - self.last_received)
                self.added_gaps.append((received - self.last_received) - (sent - self.last_sent))
            self.delays.append(received - sent)
            self.tokens += 1
            self.last_sent, self.last_received, self.last = sent, received, received


async def _exchange(host: str, port: int, request: bytes, stream: Stream | None) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request; feed the body to `stream` as it arrives, or return it whole."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        body = bytearray()
        pending = b""

        def feed(data: bytes) -> None:
            nonlocal pending
            if stream is None or status != 200:
                body.extend(data)
                return
            # Whole lines only: a stamp split across two reads is read once it is complete.
            data = pending + data
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            stream.take(data[:cut], time.monotonic())

        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                feed(await reader.readexactly(size + 2))
        elif (match := re.search(rb"content-length: *(\d+)", lower)) is not None:
            feed(await reader.readexactly(int(match[1])))
        else:
            while data := await reader.read(65536):
                feed(data)
        if stream is not None and pending:
            stream.take(pending, time.monotonic())
        return status, bytes(body)
    finally:
        writer.close()


def _request(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Door:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["door"]
        self.tokens: int = spec["tokens"]
        site_host, site_port = spec["site"].split(":")
        fake_host, fake_port = spec["fake"].split(":")
        self.site = (site_host, int(site_port))
        self.fake = (fake_host, int(fake_port))
        self.session: str = spec.get("session", "")
        self.csrf: str = spec.get("csrf", "")
        self.bearer: str = spec.get("bearer", "")
        self.conversations: list[int] = []

    def _json(self, path: str, payload: dict[str, Any], to_fake: bool = False) -> bytes:
        host, port = self.fake if to_fake else self.site
        headers = {"Content-Type": "application/json"}
        if not to_fake:
            headers["Authorization"] = f"Bearer {self.bearer}"
        return _request("POST", path, f"{host}:{port}", headers, json.dumps(payload).encode())

    async def prepare(self, streams: int) -> None:
        """What a stream needs before its clock starts: the REST door posts into a conversation."""
        if self.name != "rest":
            return
        for _ in range(streams):
            status, body = await _exchange(*self.site, self._json("/api/conversations", {"title": "bench"}), None)
            if status != 201:
                raise Refused(f"creating a conversation: {status} {body[:200]!r}")
            self.conversations.append(json.loads(body)["id"])

    async def run(self, stream: Stream) -> None:
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Go"}], "stream": True}
        chat["max_tokens"] = self.tokens
        if self.name == "direct":
            await self._stream(stream, *self.fake, self._json("/v1/chat/completions", chat, to_fake=True))
        elif self.name == "openai":
            await self._stream(stream, *self.site, self._json("/v1/chat/completions", chat))
        elif self.name == "workflow":
            run = {"input": {"prompt": "Go", "max_tokens": self.tokens}}
            await self._stream(stream, *self.site, self._json("/api/workflows/runs", run))
        elif self.name == "rest":
            message = {"prompt": "Go", "stream": True, "max_tokens": self.tokens}
            path = f"/api/conversations/{self.conversations.pop()}/messages"
            await self._stream(stream, *self.site, self._json(path, message))
        elif self.name == "page":
            # As the page's htmx form sends it; the answer's stream URL is in the turn it gets back.
            host = f"{self.site[0]}:{self.site[1]}"
            cookie = {"Cookie": self.session}
            form = f"prompt=Go&max_tokens={self.tokens}".encode()
            headers = {**cookie, "X-CSRFToken": self.csrf, "HX-Request": "true"}
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            status, body = await _exchange(*self.site, _request("POST", "/c/new/send", host, headers, form), None)
            if status != 200:
                raise Refused(f"send: {status} {body[:200]!r}")
            # The turn as the page gets it, before the parts of the page it swaps out of band (the
            # list's titles are the fake's stamps too): an answer that had begun, or ended, when
            # the turn was drawn comes with its text so far, and those tokens arrive with it.
            turn = body.split(b"hx-swap-oob", 1)[0]
            stream.take(turn, time.monotonic())
            found = STREAM_URL.search(turn)
            if found is None:
                if stream.tokens:
                    return  # it had ended: the page shows it whole, and follows nothing
                raise Refused(f"send: {status} {body[:200]!r}")
            url = found[1].decode().replace("&amp;", "&")
            await self._stream(stream, *self.site, _request("GET", url, host, cookie))
        else:
            raise ValueError(f"no door {self.name!r}")

    async def _stream(self, stream: Stream, host: str, port: int, request: bytes) -> None:
        status, body = await _exchange(host, port, request, stream)
        if status != 200:
            raise Refused(f"{status} {body[:200]!r}")


async def one(door: Door, stream: Stream, start_at: float) -> None:
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    stream.started = time.monotonic()
    try:
        await door.run(stream)
    except (Refused, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"[:300]
    if stream.error is None and stream.tokens != door.tokens:
        stream.error = f"{stream.tokens} of {door.tokens} tokens"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 in milliseconds (nearest rank), None when there is nothing to rank."""
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": rank(0.5), "p99": rank(0.99)}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    door = Door(spec)
    if "arrivals" in spec:
        rate, seconds = spec["arrivals"]["rate"], spec["arrivals"]["seconds"]
        count = int(rate * seconds)
        offsets = [index / rate for index in range(count)]
    else:
        count = spec["concurrency"]
        offsets = [0.0] * count
    await door.prepare(count)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    streams = [Stream() for _ in range(count)]
    begin = time.monotonic() + 0.05
    await asyncio.gather(*(one(door, stream, begin + offset) for stream, offset in zip(streams, offsets, strict=True)))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    done = [s for s in streams if s.error is None and s.first is not None]
    firsts = [s.first - s.started for s in done if s.first is not None]
    end = max((s.last for s in streams if s.tokens), default=begin)
    tokens = sum(s.tokens for s in streams)
    return {
        "door": door.name,
        "streams": count,
        "completed": len(done),
        "errors": sorted({s.error for s in streams if s.error})[:5],
        "error_count": sum(1 for s in streams if s.error),
        "tokens": tokens,
        "seconds": end - begin,
        "throughput": tokens / (end - begin) if end > begin else 0.0,
        "TTFT": percentiles(firsts),
        "TPOT": percentiles([(s.last - s.first) / (s.tokens - 1) for s in done if s.first and s.tokens > 1]),
        "ITL": percentiles([gap for s in done for gap in s.gaps]),
        "E2EL": percentiles([s.last - s.started for s in done]),
        "added_TTFT": percentiles([first - s.fake_ttft for first, s in zip(firsts, done, strict=True)]),
        "added_ITL": percentiles([gap for s in done for gap in s.added_gaps]),
        "token_delay": percentiles([delay for s in done for delay in s.delays]),
        "load_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
