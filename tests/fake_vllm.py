"""A fake vLLM OpenAI-compatible server on loopback, for tests that cross real sockets.

It speaks what /work/shared/vllm-protocol.md recorded from vLLM 0.32: the same routes, JSON
shapes, error bodies and SSE frames, sent with chunked transfer encoding over HTTP/1.1 as uvicorn
does. Knobs (`reply`, `echo`, `token_delay`, `fault`, `fault_after`, `line_end`, and what /metrics says of the
queue and the KV cache: `waiting`, `kv_cache_usage`) can be changed between requests;
`reset()` restores them and clears what was recorded.

The tokenizer is deterministic and shared by /tokenize, the context-length checks and
`usage.prompt_tokens`. Messages are rendered with the ChatML template of Qwen2
(`<|im_start|>role\\ncontent<|im_end|>\\n` each, Qwen2's default system message when none is
given, then `<|im_start|>assistant\\n`), and every `<|im_start|>`, `<|im_end|>`, line break and
run of other non-space characters is one token. A token is never fewer than one UTF-8 byte, so a
count never exceeds the byte count, the bound chat/context.py's estimate relies on.

Faults (`fault`), each as vLLM or the network would show it:

- "refuse": nothing listens on the port (connects are refused); setting `fault` to anything else,
  or `reset()`, listens again on the same port.
- "context_length", "max_tokens", "model_not_found", "server_error": the documented error body
  before any stream. "model_not_found" also happens whenever the request names another model.
- "flat_error": a 400 in the flat body of releases before 0.10.1.
- "error_frame": 200, `fault_after` deltas, an error frame, then `[DONE]`.
- "drop": after `fault_after` deltas the server closes the connection mid-body (with
  `fault_after=0`, before sending any response).
- "no_done": every delta, then the body ends cleanly with no finish_reason and no `[DONE]`.
- "stall": after `fault_after` deltas nothing more comes until the client goes away (with
  `fault_after=0`, not even the response headers, like a request stuck in vLLM's queue).
- "ping": not an error: SSE comments (`: ping`), `data:` without its space and CRLF line ends, as
  other SSE servers send them.
"""

import json
import re
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.waiting import WAIT_WITHIN

FAULTS = frozenset(
    {
        "refuse",
        "context_length",
        "max_tokens",
        "model_not_found",
        "server_error",
        "flat_error",
        "error_frame",
        "drop",
        "no_done",
        "stall",
        "ping",
    }
)
DEFAULT_REPLY = ("Hello", "!", " How", " can", " I", " help", " you", " today?")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SYSTEM_FINGERPRINT = "vllm-0.32.0-fake"
ENGINE_FAILURE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


@dataclass
class Instructed:
    """How the fake answers a request whose system message contains a given text (`instructed`):
    the site's own small requests (naming a conversation) apart from the chat it streams."""

    reply: list[str]
    status: int = 200  # anything else: an error body of that status instead
    delay: float = 0.0  # seconds before answering
    # While set and not open, the answer waits for it to open (a test that must see the page before
    # the answer lands); bounded by WAIT_WITHIN, as `delta_gate`, so a failed test leaves no handler waiting forever.
    gate: threading.Event | None = None


_PIECES = re.compile(r"<\|im_start\|>|<\|im_end\|>|\n|(?:(?!<\|im_(?:start|end)\|>)\S)+")
_SPECIAL_IDS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "\n": 198}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def render_chat(messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """The prompt text Qwen2's ChatML template makes of `messages`."""
    if not messages or messages[0].get("role") != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *messages]
    text = "".join(f"<|im_start|>{m.get('role')}\n{_text(m.get('content'))}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n" if add_generation_prompt else text


def tokenize(text: str) -> list[str]:
    return _PIECES.findall(text)


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """What the fake's /tokenize and `usage.prompt_tokens` say for these chat messages."""
    return len(tokenize(render_chat(messages)))


def _token_id(piece: str) -> int:
    return _SPECIAL_IDS.get(piece) or zlib.crc32(piece.encode()) % 151643


def _error_body(status: int, message: str, type_: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(payload: Any) -> bytes:
    # Starlette's JSONResponse: compact, UTF-8 rather than \u escapes, so U+2028 and friends go
    # raw. A lone surrogate in `reply` (which UTF-8 cannot encode) goes as JSON's "\ud800" escape.
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", text).encode()


class _ServerGone(Exception):
    """The fake itself dropped the connection (reset, refuse or stop): not a client disconnect."""


class _ClientGone(Exception):
    """The client closed the connection while its answer was still being sent."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # uvicorn's backlog (socketserver's is 5): hundreds of streams may connect at once.
    request_queue_size = 2048
    fake: "FakeVLLM"

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]  # what TCPServer bound

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.fake.tls is not None:
            # The handshake in the connection's own thread (the first read), not in the accepting one.
            connection = self.fake.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ssl.SSLError):  # a client that does not trust the certificate
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # As uvicorn (asyncio) does: without it, a kept-alive connection's next response waits on
        # Nagle's algorithm for the client's delayed ACK, 40 ms, before its first frame goes out.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            pass  # a client that hung up between two requests on a keep-alive connection

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.server.fake._authorized(self):
            self.server.fake._get(self, urlsplit(self.path).path)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.server.fake._authorized(self):
            self.server.fake._post(self, urlsplit(self.path).path, raw)

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def send_json(self, status: int, payload: Any) -> None:
        self.send_body(status, _dumps(payload), "application/json")


class FakeVLLM:
    def __init__(
        self,
        served_model_name: str = "qwen2-7b-instruct",
        max_model_len: int = 2048,
        root: str = "/models/qwen2-tiny-random",  # what /v1/models says vLLM loaded
        api_key: str = "",  # as vLLM's --api-key: every /v1 route wants `Authorization: Bearer <key>`
        tls: ssl.SSLContext | None = None,  # serve https with this server-side context
    ) -> None:
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.tls = tls
        self.unauthorized = 0  # requests refused for want of the key
        # Each request's path and Authorization header (None without), since the last reset.
        self.authorizations: list[tuple[str, str | None]] = []
        self.accepted = 0  # connections accepted since the last reset
        self.max_model_len = max_model_len
        self.model_root = root
        self.port = 0
        self._changed = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Bumped whenever the fake drops connections itself, so a stream can tell that from a client leaving.
        self._epoch = 0
        self._fault: str | None = None
        self._running = 0
        self._disconnects = 0
        # vLLM's vllm:generation_tokens counter: it only grows, as in a vLLM that never restarts.
        self._generated_tokens = 0
        self._started = time.time()
        self.requests: list[dict[str, Any]] = []
        self.tokenize_requests: list[dict[str, Any]] = []
        self.instructed_requests: list[dict[str, Any]] = []  # those answered by `instructed`
        self._set_defaults()

    def _set_defaults(self) -> None:
        self.reply: list[str] = list(DEFAULT_REPLY)
        # When set, a chat answer repeats what the site sent for this turn in place of `reply` (the
        # messages after the last answer, system messages aside): a test sees in the page what the
        # model was given, e.g. an attached file's text.
        self.echo = False
        self.token_delay = 0.0
        self.fault_after = 2
        # What ends each SSE line: "\n" as uvicorn sends it, or "\r" or "\r\n", which SSE allows too.
        self.line_end = "\n"
        # What /metrics says of the queue and the KV cache (running is counted from real requests).
        self.waiting = 0
        self.kv_cache_usage = 0.0
        # Answers to requests by their system message's text (see Instructed); others get `reply`.
        self.instructed: dict[str, Instructed] = {}
        # While set and not open, a streamed answer's next delta waits for it to open (an engine that
        # pauses mid-answer until the test has seen what it needs, then goes on).
        self.delta_gate: threading.Event | None = None
        # The first delta the gate holds: the answer streams freely up to it (the page mid-answer),
        # then waits there, whatever the machine's pace, until the test has looked and opens it.
        self.delta_gate_from = 0
        # While set and not open, /tokenize answers only once it opens (an engine slow to count a
        # prompt, held until the test has seen what the site does meanwhile).
        self.tokenize_gate: threading.Event | None = None

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> "FakeVLLM":
        if self._server is None and self._fault != "refuse":
            self._listen()
        return self

    def stop(self) -> None:
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> "FakeVLLM":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def reset(self) -> None:
        """Defaults back, every connection closed (ending stalled streams), records cleared."""
        self._drop_connections(open_gates=True)
        self.fault = None
        self._set_defaults()
        with self._changed:
            self.requests.clear()
            self.tokenize_requests.clear()
            self.instructed_requests.clear()
            self.authorizations.clear()
            self.accepted = 0
            self._disconnects = 0
            self._changed.notify_all()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = server.server_address[1]
        # A short poll interval so that "refuse" and stop() take effect at once.
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-vllm-{self.port}", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def _track(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.add(connection)
            self.accepted += 1

    def _untrack(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.discard(connection)

    def _drop_connections(self, timeout: float = 5.0, *, open_gates: bool = False) -> None:
        """Close every open connection, including idle keep-alive ones, and wait for streams to end;
        with `open_gates`, the answers a test left held go on too, to find their connections closed
        (opened only after the close, so that a held answer cannot end whole in the next test)."""
        with self._changed:
            self._epoch += 1
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if open_gates:
                gates = [
                    self.delta_gate,
                    self.tokenize_gate,
                    *(instructed.gate for instructed in self.instructed.values()),
                ]
                for gate in gates:
                    if gate is not None:
                        gate.set()
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._running == 0, timeout)

    # --- knobs and records -----------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value is not None and value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; choose from {sorted(FAULTS)}")
        was, self._fault = self._fault, value
        if value == "refuse" and was != "refuse":
            self._close_listener()
            # Pooled keep-alive connections would otherwise still reach the old handlers.
            self._drop_connections()
        elif was == "refuse" and value != "refuse" and self.port:
            self._listen()

    @property
    def running(self) -> int:
        """Generations in progress now, as vllm:num_requests_running counts them."""
        with self._changed:
            return self._running

    @property
    def generated_tokens(self) -> int:
        """Tokens sent since the fake started, as vllm:generation_tokens_total counts them."""
        with self._changed:
            return self._generated_tokens

    def disconnects(self) -> int:
        """Streams whose client closed the connection before the stream ended, since the last reset."""
        with self._changed:
            return self._disconnects

    def wait_for_disconnect(self, timeout: float = WAIT_WITHIN, count: int = 1) -> bool:
        """Wait until at least `count` disconnects were recorded since the last reset."""
        return self.wait_for(lambda: self._disconnects >= count, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_WITHIN) -> bool:
        """Wait until `predicate()` holds, re-checked whenever a request arrives, starts or ends generating."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # --- routes ----------------------------------------------------------------------------------

    def _authorized(self, handler: _Handler) -> bool:
        """vLLM's --api-key check (its AuthenticationMiddleware): only the /v1 routes want the key;
        /health, /metrics and /tokenize answer anyone."""
        with self._changed:
            self.authorizations.append((urlsplit(handler.path).path, handler.headers.get("authorization")))
        if not self.api_key or not urlsplit(handler.path).path.startswith("/v1"):
            return True
        if handler.headers.get("authorization") == f"Bearer {self.api_key}":
            return True
        with self._changed:
            self.unauthorized += 1
            self._changed.notify_all()
        handler.send_json(401, {"error": "Unauthorized"})
        return False

    def _get(self, handler: _Handler, path: str) -> None:
        if path == "/health":
            # A dead engine answers 503 (or 500) here.
            handler.send_body(503 if self._fault == "server_error" else 200, b"", "application/json")
        elif path == "/v1/models":
            handler.send_json(200, self._models())
        elif path == "/metrics":
            handler.send_body(200, self._metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/v1/chat/completions", "/tokenize"):
            handler.send_json(405, {"detail": "Method Not Allowed"})
        else:
            handler.send_json(404, {"detail": "Not Found"})

    def _post(self, handler: _Handler, path: str, raw: bytes) -> None:
        if path in ("/health", "/v1/models", "/metrics"):
            handler.send_json(405, {"detail": "Method Not Allowed"})
            return
        if path not in ("/v1/chat/completions", "/tokenize"):
            handler.send_json(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            message = (
                "1 validation error:\n  {'type': 'json_invalid', 'loc': ('body', 1), 'msg': 'JSON decode error', "
                f"'input': {{}}, 'ctx': {{'error': {str(exc)!r}}}}}"
            )
            handler.send_json(400, _error_body(400, message, "Bad Request", "body.1"))
            return
        if path == "/tokenize":
            self._tokenize(handler, body)
        else:
            self._chat(handler, body)

    def _models(self) -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": self.model_root,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{uuid.uuid4().hex[:16]}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            ],
        }

    def _metrics(self) -> str:
        # Written as prometheus_client writes vLLM 0.32's metrics (vllm/v1/metrics/loggers.py): a
        # counter's sample ends in _total, with a _created sample beside it.
        labels = f'engine="0",model_name="{self.served_model_name}"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {float(self.kv_cache_usage)}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generated_tokens)}\n"
            f"vllm:generation_tokens_created{{{labels}}} {self._started}\n"
        )

    def _model_not_found(self, handler: _Handler, model: Any) -> None:
        message = f"The model `{model}` does not exist. Valid aliases: {self.served_model_name}."
        handler.send_json(404, _error_body(404, message, "NotFoundError", "model"))

    def _tokenize(self, handler: _Handler, body: dict[str, Any]) -> None:
        with self._changed:
            self.tokenize_requests.append(body)
            self._changed.notify_all()
        if (gate := self.tokenize_gate) is not None:
            gate.wait(WAIT_WITHIN)
        if body.get("model") not in (None, self.served_model_name):
            self._model_not_found(handler, body.get("model"))
            return
        if isinstance(body.get("messages"), list):
            text = render_chat(body["messages"], add_generation_prompt=body.get("add_generation_prompt", True))
        else:
            text = str(body.get("prompt", ""))
        pieces = tokenize(text)
        handler.send_json(
            200,
            {
                "count": len(pieces),
                "max_model_len": self.max_model_len,
                "tokens": [_token_id(piece) for piece in pieces],
                "token_strs": None,
            },
        )

    def _chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        with self._changed:
            # The site's own small requests apart, so that `requests` holds the chat alone.
            (self.instructed_requests if self._instructed_for(body) else self.requests).append(body)
            self._changed.notify_all()
        fault, limit = self._fault, self.max_model_len
        if (instructed := self._instructed_for(body)) is not None and instructed.status != 200:
            time.sleep(instructed.delay)
            handler.send_json(
                instructed.status, _error_body(instructed.status, ENGINE_FAILURE, "InternalServerError", None)
            )
            return

        def bad_request(message: str, param: str | None) -> None:
            handler.send_json(400, _error_body(400, message, "BadRequestError", param))

        if fault == "model_not_found" or body.get("model") != self.served_model_name:
            self._model_not_found(handler, body.get("model"))
            return
        if fault == "server_error":
            handler.send_json(500, _error_body(500, ENGINE_FAILURE, "InternalServerError", None))
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            bad_request("messages must be a list of message objects. (parameter=messages)", "messages")
            return
        prompt_tokens = count_tokens(messages)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            bad_request(f"max_tokens must be an integer, got {max_tokens!r}. (parameter=max_tokens)", "max_tokens")
            return
        if fault == "flat_error":
            # The body of releases before 0.10.1, for the context overflow they reported this way.
            completion = max(max_tokens or 0, limit + 1 - prompt_tokens)
            message = (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + completion} tokens ({prompt_tokens} in the messages, {completion} in the "
                "completion). Please reduce the length of the messages or completion."
            )
            payload = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
            handler.send_json(400, payload)
            return
        temperature = body.get("temperature")
        if isinstance(temperature, int | float) and temperature < 0:
            value = float(temperature)
            bad_request(
                f"temperature must be non-negative, got {value}. (parameter=temperature, value={value})", "temperature"
            )
            return
        if fault == "max_tokens" or (max_tokens is not None and max_tokens > limit):
            value = max_tokens if max_tokens is not None and max_tokens > limit else 2 * limit
            message = (
                f"max_tokens={value} cannot be greater than max_model_len={limit}. "
                f"Please request fewer output tokens. (parameter=max_tokens, value={value})"
            )
            bad_request(message, "max_tokens")
            return
        if max_tokens is not None and max_tokens < 1:
            bad_request(
                f"max_tokens must be at least 1, got {max_tokens}. (parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
            return
        if fault == "context_length" or prompt_tokens > limit:
            value = max(prompt_tokens, limit + 1)
            message = (
                f"This model's maximum context length is {limit} tokens. However, your prompt contains at least "
                f"{value} input tokens, which exceeds this limit even without any output tokens. Please reduce the "
                f"length of the input prompt. (parameter=input_tokens, value={value})"
            )
            bad_request(message, "input_tokens")
            return
        if max_tokens is None:
            max_tokens = limit - prompt_tokens
        elif prompt_tokens + max_tokens > limit:
            message = (
                f"'max_tokens' is too large: {max_tokens}. This model's maximum context length is {limit} tokens "
                f"and your request has {prompt_tokens} input tokens ({max_tokens} > {limit} - {prompt_tokens}). "
                f"(parameter=max_tokens, value={max_tokens})"
            )
            bad_request(message, "max_tokens")
            return
        if body.get("stream_options") is not None and not body.get("stream"):
            bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
            return
        self._generate(handler, body, prompt_tokens, max_tokens)

    # --- generation ------------------------------------------------------------------------------

    def _generate(self, handler: _Handler, body: dict[str, Any], prompt_tokens: int, max_tokens: int) -> None:
        with self._changed:
            epoch = self._epoch
            self._running += 1
            self._changed.notify_all()
        try:
            if body.get("stream"):
                self._stream(handler, body, prompt_tokens, max_tokens, epoch)
            else:
                self._complete(handler, body, prompt_tokens, max_tokens, epoch)
        except (_ClientGone, _ServerGone, OSError) as exc:
            handler.close_connection = True
            with self._changed:
                gone_by_itself = not isinstance(exc, _ServerGone) and epoch == self._epoch
                if gone_by_itself and body.get("stream"):
                    self._disconnects += 1
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _stream(self, handler: _Handler, body: dict[str, Any], prompt_tokens: int, max_tokens: int, epoch: int) -> None:
        fault, fault_after, delay = self._fault, self.fault_after, self.token_delay
        instructed = self._instructed_for(body)
        deltas = self._reply_to(body, instructed)
        finish_reason = "length" if len(deltas) >= max_tokens else "stop"
        deltas = deltas[:max_tokens]
        connection = handler.connection
        chunk_id, created, model = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time()), body["model"]
        eol = "\r\n" if fault == "ping" else self.line_end

        def send(text: str) -> None:
            data = text.encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def frame(payload: Any) -> None:
            data = payload if isinstance(payload, str) else _dumps(payload).decode()
            if fault == "ping":
                send(f": ping{eol}{eol}data:{data}{eol}{eol}")
            else:
                send(f"data: {data}{eol}{eol}")

        def chunk(delta: dict[str, str], finish: str | None = None, *, first: bool = False) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish:
                choice["stop_reason"] = None
            if not first:
                choice["token_ids"] = None
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}
            payload["choices"] = [choice]
            if first:
                payload |= {"prompt_token_ids": None, "prompt_text": None}
            return payload

        if fault_after == 0 and fault == "stall":
            self._wait_for_client_to_leave(connection, epoch)
        if fault_after == 0 and fault == "drop":
            connection.shutdown(socket.SHUT_RDWR)
            raise _ServerGone
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        frame(chunk({"role": "assistant", "content": ""}, first=True))
        frame(chunk({"content": ""}))
        for sent in range(len(deltas) + 1):
            if sent == fault_after and fault == "error_frame":
                error = _error_body(500, ENGINE_FAILURE, "InternalServerError", None)
                # vLLM writes this frame with json.dumps' default separators.
                frame(json.dumps(error))
                frame("[DONE]")
                send("")
                return
            if sent == fault_after and fault == "drop":
                connection.shutdown(socket.SHUT_RDWR)
                raise _ServerGone
            if sent == fault_after and fault == "stall":
                self._wait_for_client_to_leave(connection, epoch)
            if sent == len(deltas):
                break
            if (gate := self.delta_gate) is not None and sent >= self.delta_gate_from:
                gate.wait(WAIT_WITHIN)
            self._pause(connection, epoch, delay)
            frame(chunk({"content": deltas[sent]}))
            with self._changed:
                self._generated_tokens += 1
                self._changed.notify_all()
        if fault == "no_done":
            send("")
            return
        frame(chunk({"content": ""}, finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage: dict[str, int | None] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(deltas)}
            usage["completion_tokens"] = len(deltas)
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}
            payload |= {"choices": [], "usage": usage, "system_fingerprint": SYSTEM_FINGERPRINT}
            frame(payload)
        frame("[DONE]")
        send("")

    def _complete(
        self, handler: _Handler, body: dict[str, Any], prompt_tokens: int, max_tokens: int, epoch: int
    ) -> None:
        fault = self._fault
        if fault == "stall":
            self._wait_for_client_to_leave(handler.connection, epoch)
        if fault == "drop":
            handler.connection.shutdown(socket.SHUT_RDWR)
            raise _ServerGone
        if fault == "error_frame":
            handler.send_json(500, _error_body(500, ENGINE_FAILURE, "InternalServerError", None))
            return
        instructed = self._instructed_for(body)
        deltas = self._reply_to(body, instructed)
        finish_reason = "length" if len(deltas) >= max_tokens else "stop"
        deltas = deltas[:max_tokens]
        if instructed is not None and instructed.gate is not None:
            instructed.gate.wait(WAIT_WITHIN)
        self._pause(
            handler.connection, epoch, (instructed.delay if instructed else 0.0) + self.token_delay * len(deltas)
        )
        with self._changed:
            self._generated_tokens += len(deltas)
            self._changed.notify_all()
        message = {"role": "assistant", "content": "".join(deltas), "refusal": None, "annotations": None}
        message |= {"audio": None, "function_call": None, "reasoning": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        choice |= {"stop_reason": None, "token_ids": None}
        usage: dict[str, int | None] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(deltas)}
        usage |= {"completion_tokens": len(deltas), "prompt_tokens_details": None, "completion_tokens_details": None}
        payload = {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time())}
        payload |= {"model": body["model"], "choices": [choice], "system_fingerprint": SYSTEM_FINGERPRINT}
        payload["usage"] = usage
        handler.send_json(200, payload)

    def _reply_to(self, body: dict[str, Any], instructed: Instructed | None) -> list[str]:
        if instructed:
            return list(instructed.reply)
        if not self.echo:
            return list(self.reply)
        turn: list[str] = []
        for message in body["messages"]:
            if message.get("role") == "assistant":
                turn = []
            elif message.get("role") != "system":
                turn.append(_text(message.get("content")))
        # A delta a word, each with the white space before it, so that the deltas join back into the text.
        return re.findall(r"\s*\S+|\s+$", "\n\n".join(turn))

    def _instructed_for(self, body: Any) -> Instructed | None:
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return None
        system = " ".join(
            _text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "system"
        )
        return next((answer for text, answer in self.instructed.items() if text in system), None)

    def _pause(self, connection: socket.socket, epoch: int, seconds: float) -> None:
        """Wait between two tokens, noticing at once if the client goes away meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            readable, _, _ = select.select([connection], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                self._check_connection(connection, epoch)
                # Bytes from the client (a pipelined request) are not an answer to wait on.
                with self._changed:
                    self._changed.wait(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return

    def _wait_for_client_to_leave(self, connection: socket.socket, epoch: int) -> None:
        while True:
            # select wakes when the client closes, and when the fake shuts the socket down itself.
            readable, _, _ = select.select([connection], [], [], 1.0)
            with self._changed:
                if self._epoch != epoch:
                    raise _ServerGone
            if readable:
                self._check_connection(connection, epoch)
                with self._changed:
                    self._changed.wait(0.05)

    def _check_connection(self, connection: socket.socket, epoch: int) -> None:
        with self._changed:
            if self._epoch != epoch:
                raise _ServerGone
        try:
            peeked = connection.recv(1, socket.MSG_PEEK)
        except OSError:
            peeked = b""
        if not peeked:
            raise _ClientGone
