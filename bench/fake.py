"""A fake vLLM for the benchmark: asyncio, its own process, every token stamped with its send time.

The tests' fake (tests/fake_vllm.py) is a thread per connection, faithful to vLLM's errors; at
hundreds of streams its threads would fight the site for the GIL's attention and the fake would be
what is measured. This one does only what the benchmark needs, on one event loop with frames
built by string formatting, so that 500 streams at 50 tokens/s cost it a fraction of a core
(its CPU time is printed beside the site's to show it).

Each answer is exactly `max_tokens` tokens (finish_reason "length"), paced at `--rate` tokens per
second from the request's arrival (the first after one token's time, as a decode step). A token's
text carries the fake's clock, CLOCK_MONOTONIC in microseconds, which every process on the machine
shares: the first is ` @<arrival>/<sent>`, the others ` @<sent>`. The text passes through every
door of the site unchanged, so a client can tell, for each token it receives, how long after the
fake sent it that was, and how long the fake itself took to the first token.

    python -m bench.fake --port 8001 [--rate 50]
"""

import argparse
import asyncio
import json
import time
import uuid

MODEL = "qwen2-7b-instruct"
MAX_MODEL_LEN = 1_000_000


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Fake:
    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.streams = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        arrival = now_us()
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines if line)}
        length = int(headers.get("content-length", "0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        path = target.split("?", 1)[0]
        if path == "/health":
            self._reply(writer, 200, b"")
        elif path == "/v1/models":
            card = {"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": MAX_MODEL_LEN}
            self._reply(writer, 200, json.dumps({"object": "list", "data": [card]}).encode())
        elif path == "/tokenize" and method == "POST":
            text = " ".join(str(m.get("content", "")) for m in body.get("messages", [])) or str(body.get("prompt", ""))
            count = len(text.split()) + 8
            payload = {"count": count, "max_model_len": MAX_MODEL_LEN, "tokens": [0] * count, "token_strs": None}
            self._reply(writer, 200, json.dumps(payload).encode())
        elif path == "/v1/chat/completions" and method == "POST":
            tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            if body.get("stream"):
                await self._stream(writer, body, tokens, arrival)
            else:
                await self._whole(writer, tokens, arrival)
        else:
            self._reply(writer, 404, b'{"detail":"Not Found"}')
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    def _reply(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )

    async def _pace(self, arrival: int, index: int) -> int:
        due = arrival / 1e6 + (index + 1) * self.interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return now_us()

    async def _stream(self, writer: asyncio.StreamWriter, body: dict[str, object], tokens: int, arrival: int) -> None:
        self.streams += 1
        # Frames built by concatenation: json.dumps per token would make the fake a bottleneck.
        chunk_id = uuid.uuid4().hex[:16]
        head = f'{{"id":"chatcmpl-{chunk_id}","object":"chat.completion.chunk","created":{int(time.time())},'
        head += f'"model":"{MODEL}","choices":'

        def frame(data: str) -> None:
            event = f"data: {data}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))

        def chunk(content: str, finish: str | None = None) -> None:
            reason = f'"{finish}"' if finish else "null"
            frame(
                head
                + '[{"index":0,"delta":{"content":"'
                + content
                + '"},"logprobs":null,"finish_reason":'
                + reason
                + "}]}"
            )

        try:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n")
            writer.write(b"transfer-encoding: chunked\r\n\r\n")
            for index in range(tokens):
                sent = await self._pace(arrival, index)
                if index == 0:
                    # With the first token, as vLLM's chat server sends the role's chunk (with its first
                    # output), not on arrival: `vllm bench serve` times TTFT to it (bench/vllm_bench.py).
                    role = '{"role":"assistant","content":""}'
                    frame(head + '[{"index":0,"delta":' + role + ',"logprobs":null,"finish_reason":null}]}')
                chunk(f" @{arrival}/{sent}" if index == 0 else f" @{sent}")
                await writer.drain()
            chunk("", "length")
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
                frame(head + '[],"usage":' + json.dumps(usage) + "}")
            frame("[DONE]")
            writer.write(b"0\r\n\r\n")
        finally:
            self.streams -= 1

    async def _whole(self, writer: asyncio.StreamWriter, tokens: int, arrival: int) -> None:
        sent = await self._pace(arrival, tokens - 1)
        content = f" @{arrival}/{sent}" * tokens
        message = {"role": "assistant", "content": content}
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
        }
        self._reply(writer, 200, json.dumps(payload).encode())


async def main(port: int, rate: float) -> None:
    fake = Fake(rate)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream")
    arguments = parser.parse_args()
    try:
        asyncio.run(main(arguments.port, arguments.rate))
    except KeyboardInterrupt:
        pass
