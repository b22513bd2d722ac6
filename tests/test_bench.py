"""The benchmark's own arithmetic: what it reads from the fake's stamps, and its profile summary.

A wrong figure here would misreport every door, so the reading of stamps is checked against
hand-computed values, and the fake and the load generator are run together over loopback.
"""

import asyncio
import subprocess
import sys

import pytest

from bench import load
from bench.profile import summarise
from tests.commands import ROOT
from tests.ports import free_port, listening
from tests.waiting import wait_for


def test_a_stream_reads_added_latency_from_the_stamps():
    stream = load.Stream(started=0.990)
    # The fake got the request at 1.000 s and sent its first token at 1.020 s; the client saw it at 1.025 s.
    stream.take(b'data: {"text": " @1000000/1020000"}\n', received=1.025)
    stream.take(b'data: {"text": " @1040000"}\n', received=1.047)
    assert stream.first == 1.025
    assert stream.fake_ttft == pytest.approx(0.020)
    assert stream.delays == pytest.approx([0.005, 0.007])
    # The client's gap (22 ms) minus the fake's (20 ms).
    assert stream.added_gaps == pytest.approx([0.002])
    assert stream.tokens == 2


def test_merged_tokens_count_each_and_repeated_ones_once():
    stream = load.Stream(started=0.0)
    stream.take(b"data:  @1000000/1020000 @1040000 @1060000\n", received=1.07)
    stream.take(b"data:  @1040000 @1060000\n", received=1.08)  # text a door sends again
    assert stream.tokens == 3
    assert stream.delays == pytest.approx([0.05, 0.03, 0.01])
    assert stream.added_gaps == pytest.approx([-0.02, -0.02])


def test_percentiles_are_nearest_rank_in_milliseconds():
    assert load.percentiles([i / 1000 for i in range(1, 101)]) == {"p50": 51.0, "p99": 100.0}
    assert load.percentiles([]) == {"p50": None, "p99": None}


def test_the_load_generator_reads_every_token_straight_from_the_fake():
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "bench.fake", "--port", str(port), "--rate", "200"], cwd=ROOT)
    try:
        wait_for(lambda: listening(port), 20, "the bench's fake to listen")
        spec = {"door": "direct", "tokens": 5, "concurrency": 3, "site": "127.0.0.1:1", "fake": f"127.0.0.1:{port}"}
        result = asyncio.run(load.main(spec))
    finally:
        fake.terminate()
        fake.wait(10)
    assert result["error_count"] == 0, result["errors"]
    assert (result["completed"], result["tokens"]) == (3, 15)
    # The gaps the client saw, read from the tokens' stamps (not timed here: a busy machine bunches them).
    assert result["ITL"]["p50"] is not None and result["ITL"]["p50"] >= 0
    assert result["added_TTFT"]["p50"] is not None


def test_a_profile_is_summarised_by_part_of_the_site():
    raw = (
        'process 1:"daphne";run (asyncio/base_events.py:1);execute (django/db/backends/sqlite3/base.py:3) 3\n'
        'process 1:"daphne";run (asyncio/base_events.py:1);dumps (json/__init__.py:231) 1\n'
    )
    summary = summarise(raw)
    assert "| database (Django ORM, sqlite3) | 75% |" in summary
    assert "| JSON encode/decode | 25% |" in summary
