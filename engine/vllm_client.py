"""The one module that talks to vLLM.

Everything above it sees typed events (`TextDelta`, `Finished`, `Usage`, `Failed`), never SSE
lines or vLLM's JSON. Every failure, whatever its shape on the wire, becomes one `Failed` with a
message written for the person reading the chat. The text in events is always text a database can
store: what vLLM's JSON can hold but no database can (see `_storable`) becomes U+FFFD here.
"""

import asyncio
import json
import math
import re
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import aiohttp
from django.conf import settings

from engine import http_client
from engine.endpoints import Endpoint, default_endpoint
from engine.server import starter


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str  # "stop" or "length", as vLLM says


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    # Nothing came from the model: no connection, or it broke (or a gateway said 502/503/504)
    # before the first delta. Such an answer may be asked again of another replica.
    unreachable: bool = False


type Event = TextDelta | Finished | Usage | Failed


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    temperature: float
    max_tokens: int
    top_p: float


# A gateway's "the upstream is not there" (bad gateway, unavailable, timed out): nothing came from a
# model, so the answer may be asked of another replica.
GATEWAY_DOWN = frozenset({502, 503, 504})
# How long, after "[DONE]", the end of the chunked body may take to arrive before the connection
# is closed rather than kept for the next request (it comes with the frame, or just after).
END_WAIT = 1.0
# The site's own short requests (health, models, tokenize, metrics): their whole time.
SHORT_REQUEST = 3.0


# --- Which model vLLM serves ----------------------------------------------------------------------

# How long what /v1/models said is taken as true: a page, a turn and the health light each want
# it, and vLLM is restarted with another model seldom.
SERVED_MODEL_TTL = 10.0


@dataclass(frozen=True, slots=True)
class ServedModel:
    """The model vLLM serves, as its /v1/models says, or as the settings assume while it cannot say."""

    id: str  # the name to ask vLLM for; "" when not known
    max_model_len: int
    root: str = ""  # what vLLM loaded: a model hub id or a folder
    live: bool = False  # said by vLLM, not assumed

    @property
    def context_length(self) -> int:
        """The context a conversation must fit: vLLM's own, capped by CHAT_CONTEXT_LENGTH if set."""
        if settings.CHAT_CONTEXT_LENGTH:
            return min(settings.CHAT_CONTEXT_LENGTH, self.max_model_len)
        return self.max_model_len

    @property
    def is_starter(self) -> bool:
        return self.id == starter.SERVED_NAME or (bool(self.root) and starter.is_starter(self.root))

    @property
    def display_name(self) -> str:
        """The model's own name for people: "Qwen2-7B-Instruct", "SmolLM2-135M-Instruct (starter model)"."""
        if self.is_starter:
            return f"{starter.DISPLAY_NAME} (starter model)"
        # The hub id's or the folder's last part keeps the model's own capitals; the served name is lower case.
        return PurePath(self.root).name if self.root else (self.id or "unknown model")


_served: dict[str, Any] = {}


def assumed_model() -> ServedModel:
    """What the settings say, for while vLLM cannot be asked."""
    return ServedModel(settings.VLLM_SERVED_MODEL_NAME, settings.VLLM_MAX_MODEL_LEN)


def known_model() -> ServedModel:
    """The model vLLM was last seen serving (however long ago), else the settings' assumption.
    For code that cannot wait on the network, such as a form's bounds."""
    if _served.get("key") == _cache_key():
        known: ServedModel = _served["model"]
        return known
    return assumed_model()


def context_length() -> int:
    return known_model().context_length


def forget_served_model() -> None:
    _served.clear()
    _asking.clear()  # a question asked before this may be answered by the model that is gone


def _cache_key() -> tuple[str, str]:
    return (settings.VLLM_BASE_URL, settings.VLLM_SERVED_MODEL_NAME)


async def served_model() -> ServedModel:
    """The model vLLM serves: from its /v1/models at most every SERVED_MODEL_TTL seconds, the
    settings' assumption while it cannot be asked."""
    if _served.get("key") == _cache_key() and time.monotonic() - _served["at"] < SERVED_MODEL_TTL:
        fresh: ServedModel = _served["model"]
        return fresh
    # One question at a time per event loop: a burst of turns that all find the note stale wait
    # for the same answer instead of each asking. Shielded: a caller that is cancelled (its client
    # left) does not cancel the others' question.
    loop = asyncio.get_running_loop()
    if (asking := _asking.get(loop)) is None or asking.done():
        asking = _asking[loop] = loop.create_task(_ask_served_model())
    return await asyncio.shield(asking)


_asking: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[ServedModel]]" = weakref.WeakKeyDictionary()


async def _ask_served_model() -> ServedModel:
    try:
        status, models = await get_json(default_endpoint(), "/models")
        listed = models["data"] if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError):
        listed = None
    return _remember(listed)


async def get_json(endpoint: Endpoint, path: str, *, beside_v1: bool = False) -> tuple[int, Any]:
    """GET `path` of `endpoint` (beside its /v1: `beside_v1`), within SHORT_REQUEST seconds: the
    status and the JSON body (None if it is not JSON). Raises aiohttp.ClientError or TimeoutError."""
    timeout = http_client.timeout(SHORT_REQUEST)
    async with await http_client.request("GET", endpoint, path, beside_v1=beside_v1, timeout=timeout) as response:
        content = await response.read()
    try:
        return response.status, json.loads(content) if content else None
    except ValueError:
        return response.status, None


async def list_models(endpoint: Endpoint) -> list[ServedModel] | Failed:
    """Every model `endpoint` serves now, as its /v1/models lists them (asked now, not cached), or
    `Failed` saying why it could not be asked."""
    try:
        timeout = http_client.timeout(SHORT_REQUEST)
        async with await http_client.request("GET", endpoint, "/models", timeout=timeout) as response:
            status, content = response.status, await response.read()
        if status != 200:
            return Failed(describe_http_error(status, content, key_sent=bool(endpoint.api_key)), unreachable=True)
        listed = json.loads(content)["data"]
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        return Failed(f"The model server did not answer properly: {exc or type(exc).__name__}", unreachable=True)
    return [
        ServedModel(
            id=str(entry["id"]),
            max_model_len=length
            if isinstance(length := entry.get("max_model_len"), int) and length > 0
            else settings.VLLM_MAX_MODEL_LEN,
            root=str(entry.get("root") or ""),
            live=True,
        )
        for entry in (listed if isinstance(listed, list) else [])
        if isinstance(entry, dict) and entry.get("id")
    ]


def _remember(listed: Any) -> ServedModel:
    """Note what vLLM's /v1/models listed (None: it could not be asked) and return the model in use."""
    model = assumed_model()
    if isinstance(listed, list):
        wanted = settings.VLLM_SERVED_MODEL_NAME
        for entry in listed:
            if isinstance(entry, dict) and entry.get("id") and (not wanted or entry["id"] == wanted):
                length = entry.get("max_model_len")
                model = ServedModel(
                    id=str(entry["id"]),
                    max_model_len=length if isinstance(length, int) and length > 0 else settings.VLLM_MAX_MODEL_LEN,
                    root=str(entry.get("root") or ""),
                    live=True,
                )
                break
    _served.update(key=_cache_key(), model=model, at=time.monotonic())
    return model


# --- A chat completion ------------------------------------------------------------------------------


async def stream_chat(
    messages: list[dict[str, str]],
    options: GenerationOptions,
    *,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> AsyncGenerator[Event, None]:
    """Stream one chat completion as events; the last event is `Usage`, `Finished` or `Failed`.

    `endpoint` is the server asked, by default VLLM_BASE_URL's; `model` is the served name to ask
    for, by default the one the default endpoint serves. Closing this generator
    (or cancelling the task iterating it) closes the HTTP connection, which is how vLLM learns to
    abort the request and free its slot. A `Failed` is `unreachable` when nothing came from a model.
    """
    endpoint = endpoint or default_endpoint()
    if model is None:
        model = (await served_model()).id
    body = {
        "model": model,
        "messages": messages,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "top_p": options.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    finished = delivered = False
    noted = http_client.Noted()
    try:
        async with _completion(endpoint, body, "text/event-stream", noted, streamed=True) as response:
            if response.status != 200:
                content = await _read_body(response)
                if response.status == 404 and endpoint == default_endpoint():
                    forget_served_model()  # vLLM may have been restarted with another model: ask again
                down = response.status in GATEWAY_DOWN
                described = describe_http_error(response.status, content, model, key_sent=bool(endpoint.api_key))
                yield Failed(described, unreachable=down)
                return
            # Not aiohttp's sock_read, which sets a timer per frame: hundreds per answer.
            with http_client.Silence(response, settings.VLLM_READ_TIMEOUT) as silence:
                async for data in _sse_data(silence.chunks()):
                    if data == "[DONE]":
                        await _read_to_the_end(response)
                        if not finished:
                            yield Failed("The model server ended the answer without saying why.")
                        return
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        yield Failed("The model server sent a frame that is not JSON.")
                        return
                    if "error" in chunk:
                        yield Failed(f"The model server failed while answering: {_error_text(chunk)}")
                        return
                    for choice in chunk.get("choices") or ():
                        if (text := (choice.get("delta") or {}).get("content")) and isinstance(text, str):
                            delivered = True
                            yield TextDelta(_storable(text))
                        if reason := choice.get("finish_reason"):
                            finished = True
                            yield Finished(reason)
                    if usage := chunk.get("usage"):
                        yield Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            if not finished:
                yield Failed(
                    "The connection to the model server closed before the answer was complete.",
                    unreachable=not delivered,
                )
    except aiohttp.ConnectionTimeoutError:
        # Waiting for one of the site's connections, or for vLLM to accept one: a connect timeout
        # is a server that is not there, not a slow answer.
        yield Failed(_pool_full(), unreachable=False) if noted.queued else Failed(_unreachable(endpoint), True)
    except aiohttp.ClientConnectorError as exc:
        yield Failed(_connect_failure(exc, endpoint), unreachable=True)
    except aiohttp.SocketTimeoutError:
        if not finished:
            yield Failed(f"The model server did not answer within {settings.VLLM_READ_TIMEOUT:g} seconds.")
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        if not finished:
            yield Failed(
                "The connection to the model server was lost before the answer was complete.",
                unreachable=not delivered,
            )
    except aiohttp.ClientError as exc:
        yield Failed(f"Could not talk to the model server: {exc}", unreachable=not delivered)


@asynccontextmanager
async def _completion(
    endpoint: Endpoint, body: dict[str, Any], accept: str, noted: http_client.Noted, *, streamed: bool = False
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A chat completion request, its response once its head has arrived. When the block raises, is
    cancelled or its generator closed mid-response, the connection is hung up on (vLLM then stops
    generating); else it goes back to the pool if the response was read to its end.

    A `streamed` response's body has no read timeout here: its reader keeps one (http_client.Silence).
    Its head must come within VLLM_READ_TIMEOUT of the request's having a connection, or
    aiohttp.SocketTimeoutError, as for any other."""
    for attempt in (1, 2):
        try:
            async with asyncio.timeout(None) as head:
                if streamed:
                    noted.head_deadline, noted.head_wait = head, settings.VLLM_READ_TIMEOUT
                response = await http_client.request(
                    "POST",
                    endpoint,
                    "/chat/completions",
                    noted=noted,
                    json=body,
                    headers={"Accept": accept},
                    timeout=http_client.timeout(sock_read=not streamed),
                )
            break
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):
                raise
            await asyncio.sleep(0)  # as below
            raise aiohttp.SocketTimeoutError("Timeout on reading the response's head") from None
        except aiohttp.ClientError as exc:
            # aiohttp has closed the connection; one turn of the loop and its socket is closed too,
            # so vLLM hears of it now even if the caller blocks next (a worker shutting down).
            await asyncio.sleep(0)
            # A kept-alive connection that vLLM closed just as the request went out (its idle
            # timeout): once more on a new one. A new connection that breaks is the answer.
            retry = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not isinstance(
                exc, aiohttp.ClientConnectorError
            )
            if not retry or not noted.reused or attempt == 2:
                raise
            noted.reused = False
    try:
        yield response
    except BaseException:
        http_client.hang_up(response)
        raise
    response.release()


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """A streamed request's whole body (an error's), within VLLM_READ_TIMEOUT, or SocketTimeoutError."""
    try:
        async with asyncio.timeout(settings.VLLM_READ_TIMEOUT):
            return await response.read()
    except TimeoutError as exc:
        if isinstance(exc, aiohttp.ClientError):
            raise
        raise aiohttp.SocketTimeoutError("Timeout on reading data from socket") from None


async def _read_to_the_end(response: aiohttp.ClientResponse) -> None:
    """After "[DONE]" only the chunked body's end is left: read it, so that the connection can carry
    the next request (aiohttp closes one whose response was not read to its end)."""
    try:
        async with asyncio.timeout(END_WAIT):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


# A lone UTF-16 surrogate ("\ud800" is valid JSON; UTF-8 has no encoding for it) and NUL
# (PostgreSQL's text refuses it) would make every write of the answer fail.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)


# SSE ends a line at CRLF, LF or CR only. httpx's `aiter_lines` (like `str.splitlines`) also ends
# one at U+2028, U+2029, U+0085 and a few controls, which JSON leaves unescaped inside a delta.
# Split as bytes, before decoding: in UTF-8 no character but CR and LF themselves has a CR or LF
# byte, so every line is whole characters, and the common case (LF only) needs no regex.
_LINE_END = re.compile(rb"\r\n|\r|\n")


async def _sse_lines(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending = b""
    after_cr = False  # the last read ended with a CR, whose LF may start the next one
    async for chunk in body:
        if not chunk:
            continue
        if after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        data = pending + chunk
        *lines, pending = _LINE_END.split(data) if b"\r" in data else data.split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def _sse_data(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event: `data:` with or without its space, comments skipped."""
    lines: list[bytes] = []
    async for line in _sse_lines(body):
        if not line:
            if lines:
                yield b"\n".join(lines).decode(errors="replace")
                lines = []
        elif line.startswith(b":"):
            continue  # a comment, such as a keep-alive ping
        elif line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    if lines:
        yield b"\n".join(lines).decode(errors="replace")


def _pool_full() -> str:
    # Not vLLM's doing: every connection the site may open to it is carrying an answer.
    return (
        f"The site is already streaming {settings.VLLM_MAX_CONNECTIONS} answers from the model server, "
        "its most at once. Try again in a moment."
    )


def _unreachable(endpoint: Endpoint) -> str:
    if endpoint != default_endpoint():
        return f"The model server is not reachable at {endpoint.shown_url}."
    return (
        f"The model server is not reachable at {endpoint.shown_url}. "
        "Start it with `python manage.py runvllm` (or check VLLM_BASE_URL)."
    )


def _connect_failure(exc: Exception, endpoint: Endpoint) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"The model server at {endpoint.shown_url} has a TLS certificate the site does not trust "
            f"({exc.certificate_error}). Set VLLM_CA_FILE to the certificate of the CA that signed it."
        )
    return _unreachable(endpoint)


def _error_text(body: Any) -> str:
    """vLLM's message from either error shape: {"error": {...}} or the older flat body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return _storable(str(inner["message"]))
        if isinstance(inner, str):
            return _storable(inner)
        if body.get("message"):
            return _storable(str(body["message"]))
    return "no details given"


def _error_param(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("param")
    return None


def describe_http_error(status: int, content: bytes, model: str | None = None, *, key_sent: bool = False) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        body = _storable(content.decode(errors="replace").strip()[:300]) or None
    text = _error_text(body) if isinstance(body, dict) else (body or "no details given")
    param = _error_param(body)
    if status == 400 and param == "max_tokens" and "maximum context length" in text:
        # vLLM >= 0.6: the prompt fits, but not with room for max_tokens more.
        limit = _number_after(r"maximum context length is (\d+)", text) or context_length()
        asked = _number_after(r"'max_tokens' is too large: (\d+)", text)
        answer = f"a {asked}-token answer" if asked else "the answer asked for"
        return (
            f"This conversation and {answer} do not fit the model's {limit}-token context. "
            "Ask for fewer tokens or start a new conversation."
        )
    if status == 400 and (param == "input_tokens" or "maximum context length" in text):
        limit = _number_after(r"maximum context length is (\d+)", text) or context_length()
        return (
            f"This conversation is too long for the model's {limit}-token context. "
            "Start a new conversation or shorten the message."
        )
    if status == 400 and param == "max_tokens":
        limit = _number_after(r"max_model_len=(\d+)", text) or context_length()
        return f"Max tokens is larger than the model's {limit}-token context allows. Ask for fewer tokens."
    if status == 404 and (param == "model" or "does not exist" in text):
        named = model if model is not None else known_model().id
        return f"The model server does not serve a model named {named!r} ({text}). Check VLLM_SERVED_MODEL_NAME."
    if status in (401, 403):
        # vLLM's --api-key answers 401 {"error": "Unauthorized"}; a gateway may say 403.
        if key_sent:
            return f"The model server refused the site's API key ({status}: {text}). Check VLLM_API_KEY."
        return f"The model server wants an API key ({status}: {text}). Set VLLM_API_KEY to the key it was started with."
    if status >= 500:
        return f"The model server failed ({status}): {text}"
    return f"The model server refused the request ({status}): {text}"


def _number_after(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


async def count_prompt_tokens(
    messages: list[dict[str, str]], *, model: str | None = None, endpoint: Endpoint | None = None
) -> int | None:
    """The exact prompt length after the chat template, from vLLM's /tokenize; None if unknown."""
    if model is None:
        model = (await served_model()).id
    try:
        timeout = http_client.timeout(10.0)
        async with await http_client.request(
            "POST",
            endpoint or default_endpoint(),
            "/tokenize",
            beside_v1=True,
            json={"model": model, "messages": messages},
            timeout=timeout,
        ) as response:
            if response.status == 200:
                return int(json.loads(await response.read())["count"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        pass
    return None


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


async def check_health(endpoint: Endpoint | None = None) -> Health:
    """Ready means /health answers 200 and /v1/models lists a model (the one named in
    VLLM_SERVED_MODEL_NAME, if that is set). What it lists is noted as the model in use."""
    endpoint = endpoint or default_endpoint()
    try:
        status, _ = await get_json(endpoint, "/health", beside_v1=True)
        if status != 200:
            return Health(False, f"vLLM answers /health with {status}")
        status, models = await get_json(endpoint, "/models")
        if status in (401, 403):
            return Health(
                False, describe_http_error(status, json.dumps(models).encode(), key_sent=bool(endpoint.api_key))
            )
        listed = models.get("data", []) if status == 200 and isinstance(models, dict) else []
        served = [m.get("id") for m in listed]
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Health(False, _connect_failure(exc, endpoint))
    except (aiohttp.ClientError, TimeoutError, AttributeError) as exc:
        return Health(False, f"vLLM did not answer properly: {exc or type(exc).__name__}")
    model = _remember(listed)
    if not model.live:
        if wanted := settings.VLLM_SERVED_MODEL_NAME:
            return Health(False, f"vLLM serves {served or 'no model'}, not {wanted!r}")
        return Health(False, "vLLM serves no model")
    return Health(True, f"vLLM serves {model.id}")


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """What vLLM's /metrics says now, summed over its engines; None where it does not say."""

    running: float | None  # requests generating now
    waiting: float | None  # requests queued for a slot
    kv_cache_usage: float | None  # the share of the KV cache in use, 0 to 1
    generation_tokens: float | None  # tokens generated since vLLM started: a counter, for a rate


# vLLM's metric names (v0.32's vllm/v1/metrics/loggers.py); the KV-cache gauge had another name
# before vLLM 0.10. A counter's samples end in `_total`, as prometheus_client writes them.
_LOAD_METRICS = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "generation_tokens": ("vllm:generation_tokens_total",),
}
# A sample line of the Prometheus text format: a name, maybe {labels}, a value, maybe a timestamp.
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{.*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, list[float]]:
    """Each metric's samples, one per set of labels (vLLM labels them by engine and model)."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not (match := _SAMPLE.match(line)):
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if not math.isfinite(value):
            continue  # NaN or ±Inf: nothing a figure can show
        samples.setdefault(match.group(1), []).append(value)
    return samples


async def read_load(endpoint: Endpoint | None = None) -> ServerLoad | Failed:
    """vLLM's load now, from its /metrics."""
    endpoint = endpoint or default_endpoint()
    try:
        timeout = http_client.timeout(SHORT_REQUEST)
        async with await http_client.request("GET", endpoint, "/metrics", beside_v1=True, timeout=timeout) as response:
            status, text = response.status, (await response.read()).decode(errors="replace")
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Failed(f"vLLM did not answer /metrics: {exc or type(exc).__name__}")
    if status != 200:
        return Failed(f"vLLM answers /metrics with {status}")
    return server_load(text)


def server_load(metrics: str) -> ServerLoad:
    """Requests and tokens summed over vLLM's engines; the KV cache's use is their mean, each engine
    having a cache of its own."""
    samples = parse_metrics(metrics)

    def first(field: str) -> list[float] | None:
        return next((samples[name] for name in _LOAD_METRICS[field] if name in samples), None)

    kv_cache = first("kv_cache_usage")
    return ServerLoad(
        running=sum(running) if (running := first("running")) is not None else None,
        waiting=sum(waiting) if (waiting := first("waiting")) is not None else None,
        kv_cache_usage=sum(kv_cache) / len(kv_cache) if kv_cache else None,
        generation_tokens=sum(tokens) if (tokens := first("generation_tokens")) is not None else None,
    )


async def complete(
    messages: list[dict[str, str]],
    options: GenerationOptions,
    *,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> str | Failed:
    """One short chat completion, not streamed: the whole text, or `Failed` saying why not.

    For the site's own small requests (naming a conversation), not for answers a person follows.
    """
    endpoint = endpoint or default_endpoint()
    body = {
        # The model vLLM says it serves, as for answers: VLLM_SERVED_MODEL_NAME may be left unset.
        "model": model or (await served_model()).id,
        "messages": messages,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "top_p": options.top_p,
    }
    noted = http_client.Noted()
    try:
        async with _completion(endpoint, body, "application/json", noted) as response:
            status, content = response.status, await response.read()
    except aiohttp.ConnectionTimeoutError:
        return Failed(_pool_full()) if noted.queued else Failed(_unreachable(endpoint), unreachable=True)
    except aiohttp.ClientConnectorError as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except aiohttp.SocketTimeoutError:
        return Failed(f"The model server did not answer within {settings.VLLM_READ_TIMEOUT:g} seconds.")
    except aiohttp.ClientError as exc:
        return Failed(f"Could not talk to the model server: {exc}", unreachable=True)
    if status != 200:
        described = describe_http_error(status, content, key_sent=bool(endpoint.api_key))
        return Failed(described, unreachable=status in GATEWAY_DOWN)
    try:
        text = json.loads(content)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Failed("The model server sent an answer without text.")
    if not isinstance(text, str):
        return Failed("The model server sent an answer without text.")
    return _storable(text)
