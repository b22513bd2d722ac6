"""The benchmark's own arithmetic: what it reads from the fake's stamps, and its profile summary.

A wrong figure here would misreport every door, so the reading of stamps is checked against
hand-computed values, and the fake and the load generator are run together over loopback.
"""

import asyncio
import subprocess
import sys

import pytest

from bench import load, vllm_bench
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


def _vllm_result(ttfts: list[float], itls: list[list[float]], e2el_p50: float, throughput: float) -> dict:
    """The fields of a `vllm bench serve --save-result --save-detailed` file that bench/vllm_bench.py reads."""
    figures = {f"{kind}_{metric}_ms": 1.0 for kind in ("median", "p99") for metric in ("ttft", "tpot", "itl", "e2el")}
    figures["median_e2el_ms"] = e2el_p50
    completed = sum(1 for gaps in itls if gaps)
    return {
        **figures,
        "completed": completed,
        "failed": len(ttfts) - completed,
        "num_prompts": len(ttfts),
        "duration": 2.0,
        "total_output_tokens": 40,
        "output_throughput": throughput,
        "ttfts": ttfts,
        "itls": itls,
    }


def test_vllm_bench_percentiles_are_numpys_linear_ones():
    assert vllm_bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert vllm_bench.percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)
    assert vllm_bench.percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert vllm_bench.percentile([], 50) is None


def test_vllm_bench_reads_the_first_token_after_the_roles_chunk_and_skips_failed_requests():
    # Two requests whose role chunk came 10 and 30 ms before their first token, and one that failed.
    result = _vllm_result([0.020, 0.040, 0.0], [[0.010, 0.02], [0.030, 0.02], []], e2el_p50=400.0, throughput=50.0)
    shown = vllm_bench.summary(result)
    assert shown["first_token_p50_ms"] == pytest.approx(50.0)  # (30 + 70) / 2
    assert shown["first_token_p99_ms"] == pytest.approx(69.6)
    assert (shown["completed"], shown["failed"]) == (2, 1)
    assert shown["e2el_p50_ms"] == 400.0 and shown["ttft_p99_ms"] == 1.0


def test_vllm_bench_shows_what_the_site_added_to_the_direct_run_at_each_concurrency():
    def row(target: str, concurrency: int, e2el: float, throughput: float) -> dict:
        result = _vllm_result([0.02], [[0.0, 0.02]], e2el_p50=e2el, throughput=throughput)
        return {"target": target, "concurrency": concurrency, **vllm_bench.summary(result)}

    rows = [row("direct", 10, 400.0, 500.0), row("site", 10, 500.0, 400.0), row("direct", 100, 400.0, 5000.0)]
    table = vllm_bench.shares(rows)
    # E2EL p50 500 ms through the site, 400 direct: 100 ms added, 20 % of the site's; 0.8 of direct's tokens/s.
    assert "| 10 | site | 0.0 / 0.0 | 0.0 | 0.0 | 100 | 20 % | 0.80 |" in table
    assert table.count("\n") == 2  # a head, a rule, and 10 alone: no site run to compare at 100
    assert vllm_bench.table(rows).count("\n") == 4  # a head, a rule and a row per run
