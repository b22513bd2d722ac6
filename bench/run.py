"""`make bench`: what the site adds to an answer's stream, door by door, side by side with vLLM.

Three processes beside this one, so that each one's CPU time is its own: the fake vLLM
(bench/fake.py, every token stamped with its send time), the site (daphne serving bench/asgi.py,
which is chatsite.asgi plus a query counter), and the load generator (bench/load.py, one event
loop on raw sockets). For each load (a burst of N streams started at the same instant, and steady
arrivals) it runs every door, straight to the fake first, then through the site, and repeats the
round so that each figure is the median of the repeats, direct and relayed runs interleaved.

Per cell it reports what `vllm bench serve` reports (TTFT, TPOT, ITL, E2EL) and what the site
added: TTFT and inter-token gap (see bench/load.py for how they are read from the stamps), the
relayed/direct throughput, the site's CPU time per 1,000 relayed tokens (/proc/<pid>/stat, the
site's process tree), the site's memory per held stream (peak RSS during a burst minus RSS before
it, over the streams held), and the database queries and writes per turn (bench/asgi.py counts
them). One py-spy profile of the site is recorded in an extra, unmeasured pass of the 100-stream
burst.

    .venv/bin/python -m bench.run [--quick] [--concurrency 1,10,100,200,500] [--workers 1]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ports import free_port, listening  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOORS = ("page", "rest", "openai", "workflow")
TICKS = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password-123"


# --- The processes and what they cost ----------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The process and its descendants: a site with many workers is measured whole."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_bytes(pid: int) -> int:
    total = 0
    for member in _tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class PeakMemory:
    """The site's highest RSS while a cell runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_bytes(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _raise_file_limit() -> None:
    # 500 streams hold 1,000+ sockets in the site (a client's and vLLM's each).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: str) -> None:
        self.args = args
        database = args.database_url or f"sqlite:///{scratch}/bench.sqlite3"
        self.fake_port, self.site_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database,
            "VLLM_BASE_URL": f"http://127.0.0.1:{self.fake_port}/v1",
            "VLLM_SERVED_MODEL_NAME": "qwen2-7b-instruct",
            "CHAT_CONTEXT_LENGTH": "100000",
            "VLLM_MAX_MODEL_LEN": "100000",
            "DJANGO_DEBUG": "false",
            # The per-person limits on answers (chat/limits.py) would refuse the load generator's
            # one user past a few answers at once: the benchmark measures the relay, not them.
            "CHAT_MAX_ANSWERS_AT_ONCE": "0",
            "CHAT_MAX_ANSWERS_PER_MINUTE": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "bench-only-secret-" + "x" * 40),
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = Path(scratch)
        self.site_pid = self.fake_pid = 0
        self.session = self.csrf = self.bearer = ""

    def manage(self, *command: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout

    def start(self) -> None:
        self.manage("migrate", "-v0")
        make_user = (
            "from django.contrib.auth.models import User; from chat.models import ApiToken; "
            f"user, _ = User.objects.get_or_create(username='bench'); user.set_password('{PASSWORD}'); user.save(); "
            "print(ApiToken.issue(user, 'bench')[1])"
        )
        self.bearer = self.manage("shell", "-c", make_user).strip().splitlines()[-1]
        fake = [sys.executable, "-m", "bench.fake", "--port", str(self.fake_port), "--rate", str(self.args.rate)]
        self.fake_pid = self._spawn(fake, self.fake_port)
        if self.args.workers == 1:
            site = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.site_port)]
            site.append("bench.asgi:application")
        else:
            # Many workers come with `manage.py up --workers` (the many-workers issue); the query
            # count is then not available, as `up` serves chatsite.asgi.
            site = [sys.executable, "manage.py", "up", "--no-vllm", "--port", str(self.site_port)]
            site += ["--workers", str(self.args.workers)]
        self.site_pid = self._spawn(site, self.site_port)
        self._sign_in()

    def _spawn(self, command: list[str], port: int) -> int:
        # Their logs (daphne's access log, the site's httpx lines) go to a file, not between the figures.
        log = open(self.logs / f"{command[2].split('.')[-1]}.log", "ab")  # closed when the process ends
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, preexec_fn=_raise_file_limit, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)

        def up() -> bool:
            if process.poll() is not None:
                log.flush()
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{command} exited with {process.returncode}:\n{tail}")
            return listening(port)

        wait_for(up, 60, f"{command[2]} to listen")
        return process.pid

    def _sign_in(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.site_port}", timeout=30) as client:
            client.get("/accounts/login/")
            data = {"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
            response = client.post("/accounts/login/", data=data)
            assert response.status_code == 302, response.text
            self.csrf = client.cookies["csrftoken"]
            self.session = "; ".join(f"{name}={value}" for name, value in client.cookies.items())

    def keep_errors(self, path: Path) -> None:
        """The site's log without its access lines and vLLM request lines: its errors, if any."""
        log = self.logs / "daphne.log"
        if log.exists():
            noise = ('" 200 ', '" 201 ', "HTTP Request:")
            kept = [line for line in log.read_text(errors="replace").splitlines() if not any(n in line for n in noise)]
            path.write_text("\n".join(kept[-5000:]) + "\n")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def queries(self) -> dict[str, int] | None:
        if self.args.workers != 1:
            return None
        response = httpx.get(f"http://127.0.0.1:{self.site_port}/__bench__/queries", timeout=10)
        counts: dict[str, int] = response.json()
        return counts

    def _settled_queries(self) -> dict[str, int] | None:
        """The counts once the site has finished writing the turns (their last writes follow the stream)."""
        counts = self.queries()
        deadline = time.monotonic() + 5
        while counts is not None and time.monotonic() < deadline:
            time.sleep(0.3)
            again = self.queries()
            if again == counts:
                break
            counts = again
        return counts

    # --- One cell: one door under one load -------------------------------------------------------

    def cell(
        self, door: str, tokens: int, concurrency: int = 0, arrivals: tuple[float, float] | None = None
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "door": door,
            "tokens": tokens,
            "site": f"127.0.0.1:{self.site_port}",
            "fake": f"127.0.0.1:{self.fake_port}",
            "session": self.session,
            "csrf": self.csrf,
            "bearer": self.bearer,
        }
        if arrivals:
            spec["arrivals"] = {"rate": arrivals[0], "seconds": arrivals[1]}
        else:
            spec["concurrency"] = concurrency
        queries_before = self._settled_queries()
        site_cpu, fake_cpu, rss_before = (
            cpu_seconds(self.site_pid),
            cpu_seconds(self.fake_pid),
            rss_bytes(self.site_pid),
        )
        started = time.monotonic()
        with PeakMemory(self.site_pid) as memory:
            load = subprocess.run(
                [sys.executable, "-m", "bench.load", json.dumps(spec)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                preexec_fn=_raise_file_limit,
            )
        wall = time.monotonic() - started
        if load.returncode:
            raise RuntimeError(f"the load generator failed: {load.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(load.stdout)
        result["site_cpu_s"] = cpu_seconds(self.site_pid) - site_cpu
        result["fake_cpu_s"] = cpu_seconds(self.fake_pid) - fake_cpu
        result["wall_s"] = wall
        queries_after = self._settled_queries()
        relayed = door != "direct"
        held = concurrency or None
        result["site_kb_per_stream"] = (memory.peak - rss_before) / 1024 / held if relayed and held else None
        result["site_cpu_ms_per_1k_tokens"] = (
            result["site_cpu_s"] * 1e6 / result["tokens"] if relayed and result["tokens"] else None
        )
        if relayed and queries_before is not None and queries_after is not None and result["streams"]:
            result["queries_per_turn"] = (queries_after["queries"] - queries_before["queries"]) / result["streams"]
            result["writes_per_turn"] = (queries_after["writes"] - queries_before["writes"]) / result["streams"]
        return result

    @contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """py-spy on the site while the block runs: a flame graph and the raw stacks to summarise."""
        spies = []
        for form, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            # 50 samples a second each: at 200 two py-spys fell 20 s behind on a busy 2-core box.
            command = ["py-spy", "record", "--nonblocking", "--subprocesses", "--rate", "50", "--format", form]
            command += ["-o", str(RESULTS / f"{name}.{suffix}"), "--pid", str(self.site_pid)]
            log = open(self.logs / f"py-spy-{form}.log", "ab")  # closed when the process ends
            spies.append(
                subprocess.Popen([str(Path(sys.executable).parent / command[0]), *command[1:]], stdout=log, stderr=log)
            )
        time.sleep(1)  # py-spy attaches
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            for spy in spies:
                spy.wait(60)


# --- Medians, the table, the chart -------------------------------------------------------------

FIGURES = {
    "added TTFT p50": ("added_TTFT", "p50"),
    "added TTFT p99": ("added_TTFT", "p99"),
    "added ITL p50": ("added_ITL", "p50"),
    "added ITL p99": ("added_ITL", "p99"),
    "token delay p99": ("token_delay", "p99"),
    "TTFT p50": ("TTFT", "p50"),
    "ITL p50": ("ITL", "p50"),
    "TPOT p50": ("TPOT", "p50"),
    "E2EL p50": ("E2EL", "p50"),
    "E2EL p99": ("E2EL", "p99"),
}


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (load, door): each figure the median over the repeats."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(run["load"], run["door"]) for run in runs}, key=lambda key: runs_order(runs, key))
    for load, door in keys:
        mine = [run for run in runs if run["load"] == load and run["door"] == door]
        row: dict[str, Any] = {"load": load, "door": door, "repeats": len(mine)}
        for name, (figure, rank) in FIGURES.items():
            row[name] = _median([run[figure][rank] for run in mine])
        for name in ("throughput", "site_cpu_ms_per_1k_tokens", "site_kb_per_stream", "queries_per_turn"):
            row[name] = _median([run.get(name) for run in mine])
        row["writes_per_turn"] = _median([run.get("writes_per_turn") for run in mine])
        ratios = [run["throughput_ratio"] for run in mine if run.get("throughput_ratio") is not None]
        row["relayed/direct throughput"] = _median(ratios) if door != "direct" else 1.0
        for name in ("site_cpu_s", "fake_cpu_s", "load_cpu_s", "wall_s"):
            row[name] = _median([run[name] for run in mine])
        row["errors"] = sum(run["error_count"] for run in mine)
        row["error_examples"] = sorted({e for run in mine for e in run["errors"]})[:3]
        rows.append(row)
    return rows


def runs_order(runs: list[dict[str, Any]], key: tuple[str, str]) -> int:
    return next(index for index, run in enumerate(runs) if (run["load"], run["door"]) == key)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| load | door | added TTFT p50 / p99 ms | added ITL p50 / p99 ms | token delay p99 ms | relayed/direct "
        "throughput | site CPU ms per 1k tokens | site KB per held stream | queries (writes) per turn "
        "| CPU s: site / fake / load (wall) | errors |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in rows:
        queries = (
            f"{row['queries_per_turn']:.1f} ({row['writes_per_turn']:.1f})"
            if row["queries_per_turn"] is not None
            else "-"
        )
        cpu = f"{row['site_cpu_s']:.1f} / {row['fake_cpu_s']:.1f} / {row['load_cpu_s']:.1f} ({row['wall_s']:.0f})"
        lines.append(
            f"| {row['load']} | {row['door']} | {_ms(row['added TTFT p50'])} / {_ms(row['added TTFT p99'])} "
            f"| {_ms(row['added ITL p50'])} / {_ms(row['added ITL p99'])} | {_ms(row['token delay p99'])} "
            f"| {_ratio(row['relayed/direct throughput'])} | {_ms(row['site_cpu_ms_per_1k_tokens'])} "
            f"| {_ms(row['site_kb_per_stream'])} | {queries} | {cpu} | {row['errors']} |"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bursts = [row for row in rows if row["load"].startswith("burst")]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for door in ("direct", *DOORS):
        mine = [row for row in bursts if row["door"] == door]
        if not mine:
            continue
        x = [int(row["load"].split()[1]) for row in mine]
        axes[0].plot(x, [max(row["added TTFT p50"] or 0, 0.01) for row in mine], "o-", label=door)
        # Not the added ITL: tokens bunched into one event make it negative, which a log axis cannot show.
        axes[1].plot(x, [max(row["token delay p99"] or 0, 0.01) for row in mine], "o-", label=door)
        axes[2].plot(x, [row["relayed/direct throughput"] for row in mine], "o-", label=door)
    titles = ("added TTFT p50 (ms)", "token delay p99: fake sent to client got (ms)", "relayed / direct throughput")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent streams (burst)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(0, 1.1)
    axes[2].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# --- The run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1, 10 and 100 streams, one repeat, 10 s of arrivals")
    parser.add_argument("--concurrency", help="burst sizes (default 1,10,100,200; add 500 if the box manages)")
    parser.add_argument("--doors", default=",".join(DOORS))
    parser.add_argument("--tokens", type=int, help="tokens per answer in a burst (default 100)")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream (default %(default)s)")
    parser.add_argument("--repeats", type=int, help="rounds of the bursts, each figure their median (default 3)")
    parser.add_argument("--arrivals", help="new streams per second x seconds, or 'none' (default 20x30)")
    parser.add_argument("--arrival-tokens", type=int, default=200)
    parser.add_argument("--profile-at", type=int, default=100, help="burst size of the profiled pass (0: none)")
    parser.add_argument("--workers", type=int, default=1, help="site workers (more need `manage.py up --workers`)")
    parser.add_argument("--database-url", default="", help="default: a scratch SQLite database")
    parser.add_argument("--name", default="", help="results file name (default: a timestamp)")
    args = parser.parse_args()
    # --quick changes the defaults; what is given on the command line stands.
    quick = {"concurrency": "1,10,100", "repeats": 1, "arrivals": "20x10", "tokens": 50}
    full = {"concurrency": "1,10,100,200", "repeats": 3, "arrivals": "20x30", "tokens": 100}
    for option, value in (quick if args.quick else full).items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    bursts = [int(n) for n in args.concurrency.split(",")]
    doors = [door for door in args.doors.split(",") if door]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    runs: list[dict[str, Any]] = []

    def measure(load: str, repeat: int, **cell: Any) -> None:
        # Straight to the fake first, then each door, in a rotating order so no door always goes first.
        rotated = doors[repeat % len(doors) :] + doors[: repeat % len(doors)]
        direct = bench.cell("direct", **cell)
        direct |= {"load": load, "repeat": repeat}
        runs.append(direct)
        for door in rotated:
            run = bench.cell(door, **cell) | {"load": load, "repeat": repeat}
            run["throughput_ratio"] = run["throughput"] / direct["throughput"] if direct["throughput"] else None
            runs.append(run)
            print(
                f"  {load} #{repeat} {door}: added TTFT p50 {_ms(run['added_TTFT']['p50'])} ms, "
                f"added ITL p99 {_ms(run['added_ITL']['p99'])} ms, throughput x{run['throughput_ratio'] or 0:.2f}, "
                f"errors {run['error_count']}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as scratch:
        bench = Bench(args, scratch)
        try:
            bench.start()
            bench.cell("openai", tokens=5, concurrency=5)  # warm up: imports, first connections
            for concurrency in bursts:
                for repeat in range(args.repeats):
                    measure(f"burst {concurrency}", repeat, tokens=args.tokens, concurrency=concurrency)
                if concurrency == args.profile_at:
                    with bench.profiled(f"profile-{name}"):
                        for door in doors:
                            bench.cell(door, tokens=args.tokens, concurrency=concurrency)
            if args.arrivals != "none":
                rate, seconds = (float(part) for part in args.arrivals.split("x"))
                measure(f"arrivals {rate:g}/s", 0, tokens=args.arrival_tokens, arrivals=(rate, seconds))
            # Queries per turn must not grow with the answer: one short and one long answer per door.
            for tokens in (10, 250):
                # Direct first: if the site is still overloaded from the arrivals, the fake is not to blame.
                for door in ("direct", *doors):
                    run = bench.cell(door, tokens=tokens, concurrency=1)
                    runs.append(run | {"load": f"1 answer of {tokens} tokens", "repeat": 0, "throughput_ratio": None})
        finally:
            bench.stop()
            bench.keep_errors(RESULTS / f"{name}-site-errors.log")

    rows = summarise(runs)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, load average before/after in 'loadavg'",
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "workers": args.workers,
        "database": "sqlite (scratch)" if not args.database_url else args.database_url.split(":", 1)[0],
        "args": vars(args),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    chart(rows, RESULTS / f"{name}.png")
    print()
    print(table(rows))
    print(f"\nwrote {RESULTS / name}.json and .png" + (f", profile-{name}.svg" if args.profile_at in bursts else ""))


if __name__ == "__main__":
    main()
