"""Server-sent events read as a browser's EventSource reads them, for the tests of every stream.

The site's streams carry JSON in their data; the model-compose door's carry plain text, hence
`sse_frames` (raw data) beside `sse_events` (decoded).
"""

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any


class _Frame:
    """The event being read, a line at a time, by the rules of the SSE specification: a blank line
    ends it, `:` starts a comment, one space after the colon is dropped, data lines join with line
    breaks, and a frame the stream ends in the middle of is discarded."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []
        self.last_id = ""  # as EventSource keeps it: the last `id:` seen, kept across events

    def read(self, line: str) -> tuple[str, str] | None:
        """The (event name, data) this line completes, if it ends a frame with data in it."""
        if not line:
            ended = (self.name, "\n".join(self.data)) if self.data else None
            self.name, self.data = "message", []
            return ended
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.name = value
        elif field == "id":
            self.last_id = value
        elif field == "data":
            self.data.append(value)
        return None


def sse_frames(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) for each event in `lines` (e.g. httpx's `response.iter_lines()`)."""
    frame = _Frame()
    for line in lines:
        if ended := frame.read(line):
            yield ended


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded JSON data) for each event in `lines`."""
    for name, data in sse_frames(lines):
        yield name, json.loads(data)


def sse_events_with_ids(lines: Iterable[str]) -> Iterator[tuple[str, Any, str]]:
    """(event name, decoded JSON data, the last event id) for each event in `lines`: the id is what
    a reconnecting EventSource sends as Last-Event-ID."""
    frame = _Frame()
    for line in lines:
        if ended := frame.read(line):
            yield ended[0], json.loads(ended[1]), frame.last_id


async def sse_events_async(chunks: AsyncIterable[bytes | str]) -> AsyncIterator[tuple[str, Any]]:
    """`sse_events` of a stream that comes in chunks, such as a Django StreamingHttpResponse's
    `streaming_content`: each event as soon as its blank line arrives."""
    frame, buffer = _Frame(), ""
    decoder = codecs.getincrementaldecoder("utf-8")()  # a chunk may end inside a character
    async for chunk in chunks:
        buffer += decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            if ended := frame.read(line.removesuffix("\r")):
                yield ended[0], json.loads(ended[1])
