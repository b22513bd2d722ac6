"""engine.sse_frames: `_sse_data`, the data of each server-sent event in a byte stream, `_json` of
one, and `_storable` text.

The text in events is always text a database can store: what vLLM's JSON can hold but no database
can (see `_storable`) becomes U+FFFD here.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

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


async def _sse_data(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each server-sent event, as bytes: `data:` with or without its space, comments skipped."""
    lines: list[bytes] = []
    async for line in _sse_lines(body):
        if not line:
            if lines:
                yield lines[0] if len(lines) == 1 else b"\n".join(lines)
                lines = []
        elif line.startswith(b":"):
            continue  # a comment, such as a keep-alive ping
        elif line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    if lines:
        yield b"\n".join(lines)


def _json(data: bytes) -> Any:
    """An event's data as JSON, decoded once, straight from its bytes (orjson), for every frame.

    What orjson refuses and json takes, json reads as before: a lone surrogate's escape ("\\ud800",
    valid JSON: `_storable` makes it U+FFFD), and bytes that are not UTF-8, each read as U+FFFD.
    Raises ValueError (json.JSONDecodeError) for data that is not JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode(errors="replace"))
