"""The tests' SSE reader (tests/sse.py) reads streams as EventSource does, however they are cut up."""

from tests.sse import sse_events, sse_events_async, sse_frames

STREAM = (
    ": ping\r\n\r\n"
    'event: delta\ndata: {"text": "안녕"}\n\n'
    "data:no space\ndata:  two spaces\n\n"
    "event: ignored\n\n"  # no data: nothing is dispatched, and the name does not carry over
    'event: done\ndata: {"status": "complete"}\n\n'
    "event: cut\ndata: off"  # the stream ends mid-frame: EventSource drops it
)


def test_frames_follow_the_event_source_rules():
    assert list(sse_frames(STREAM.splitlines())) == [
        ("delta", '{"text": "안녕"}'),
        ("message", "no space\n two spaces"),
        ("done", '{"status": "complete"}'),
    ]


async def test_chunks_cut_anywhere_give_the_same_events():
    json_stream = STREAM.replace("data:no space\ndata:  two spaces\n\n", 'data: "plain"\n\n')
    expected = list(sse_events(json_stream.splitlines()))
    assert expected == [("delta", {"text": "안녕"}), ("message", "plain"), ("done", {"status": "complete"})]
    encoded = json_stream.encode()

    async def chunks(size: int):
        for start in range(0, len(encoded), size):
            yield encoded[start : start + size]  # cuts inside "안녕" and between \r and \n

    for size in (1, 2, 3, 7, len(encoded)):
        assert [event async for event in sse_events_async(chunks(size))] == expected, size
