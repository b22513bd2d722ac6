"""What one turn and one relayed token cost the site in CPU, each apart from the other, and what
the machine charges a process for waking up.

bench/run.py's "site CPU per 1k tokens" mixes a turn's start with its tokens (a burst of 100-token
answers is mostly starts) and, at light load, the machine's cost of waking an idle process (see
`wake_up_cost`). Here, through one door:

- per turn: a burst of N answers of 3 tokens, the site's CPU over N;
- per relayed token: N streams of long answers (2,000 tokens at 50 tokens/s: the turns' starts are
  a small part), the site's CPU less N starts, over the tokens relayed; at 100 streams the site's
  loop is never idle, so no wake-up is counted;
- the wake-up: an asyncio loop in this process sleeping and waking, on-CPU time per wake from the
  scheduler's own count (/proc/self/schedstat).

    .venv/bin/python -m bench.costs [--door openai] [--streams 100] [--tokens 2000] [--site ../old-tree]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.run import RESULTS, ROOT, Bench, Setup, cpu_seconds
from bench.servers import SERVERS


def on_cpu_us() -> float:
    return int(Path("/proc/self/schedstat").read_text().split()[0]) / 1e3


async def wake_up_cost(sleep: float, times: int) -> float:
    """On-CPU microseconds per wake-up of an idle asyncio loop, for this machine."""
    before = on_cpu_us()
    for _ in range(times):
        await asyncio.sleep(sleep)
    return (on_cpu_us() - before) / times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--door", default="openai", help="page, rest, openai or workflow")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per answer for the per-token figure")
    parser.add_argument("--name", default="costs")
    parser.add_argument("--site", type=Path, default=ROOT, help="the checkout whose site is served (bench/run.py's)")
    parser.add_argument("--server", default="daphne", choices=SERVERS, help="the ASGI server (bench/servers.py)")
    args = parser.parse_args()
    figures: dict[str, object] = {
        "server": args.server,
        "door": args.door,
        "streams": args.streams,
        "tokens": args.tokens,
    }
    figures["wake_up_us"] = {f"{s * 1000:g} ms asleep": asyncio.run(wake_up_cost(s, 200)) for s in (0.001, 0.02)}
    with tempfile.TemporaryDirectory() as scratch:
        bench = Bench(
            argparse.Namespace(rate=50.0),
            Setup("sqlite", 1, server=args.server),
            args.site.resolve(),
            Path(scratch) / "site",
        )
        try:
            bench.start()
            bench.cell(args.door, tokens=5, concurrency=5)  # warm up
            short = bench.cell(args.door, tokens=3, concurrency=args.streams)
            per_turn = short["site_cpu_s"] / max(short["streams"], 1)
            time.sleep(2)  # the burst's last writes (titles, ends)
            long = bench.cell(args.door, tokens=args.tokens, concurrency=args.streams)
            relayed = max(long["tokens"], 1)
            figures |= {
                "site_cpu_ms_per_turn": per_turn * 1e3,
                "burst_added_TTFT_p50_ms": short["added_TTFT"]["p50"],
                "site_cpu_us_per_relayed_token": (long["site_cpu_s"] - per_turn * long["streams"]) * 1e6 / relayed,
                "relayed_tokens_per_s": long["throughput"],
                "asked_tokens_per_s": 50.0 * args.streams,
                "site_cpu_s": {"short burst": short["site_cpu_s"], "long answers": long["site_cpu_s"]},
                "errors": short["error_count"] + long["error_count"],
                "site_idle_cpu_s_per_s": _idle(bench),
            }
        finally:
            bench.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(figures, indent=1))
    json.dump(figures, sys.stdout, indent=1)
    print()


def _idle(bench: Bench) -> float:
    before = cpu_seconds(bench.site_pids)
    time.sleep(3)
    return (cpu_seconds(bench.site_pids) - before) / 3


if __name__ == "__main__":
    main()
