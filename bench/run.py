"""`make bench`: what the site adds to an answer's stream, door by door, side by side with vLLM.

Three processes beside this one, so that each one's CPU time is its own: the fake vLLM
(bench/fake.py, every token stamped with its send time), the site (daphne serving bench/asgi.py,
which is chatsite.asgi plus a query counter), and the load generator (bench/load.py, one event
loop on raw sockets). For each load (a burst of N streams started at the same instant, and steady
arrivals) it runs every door, straight to the fake first, then through the site, and repeats the
round so that each figure is the median of the repeats, direct and relayed runs interleaved.

It does so for each set-up in turn, a database and a number of workers (`--setups`): each gets a
fresh database (a scratch SQLite file, or a scratch PostgreSQL server from tests/servers.py), a
scratch Redis when it has several workers, its own fake and site, and all of them are stopped
before the next set-up starts. The first set-up gets the full grid (every door, --repeats rounds,
--arrivals); the others, there to compare with it, the doors of --other-doors, --other-repeats
rounds and --other-arrivals. By default (12 to 15 minutes on this 2-core box, bench/README.md):

  sqlite-1 (the targets' set-up)   bursts of 1, 10, 100, 200, 500 streams of 100 tokens, every
                                   door, 3 rounds (1 of 500), arrivals 20/s for 20 s, the
                                   profiled pass
  sqlite-3, postgresql-1, -3       the same bursts, the OpenAI door, 1 round, arrivals 20/s for 10 s

--quick (5 to 6 minutes): bursts of 1, 10, 100 streams of 50 tokens, 1 round, arrivals for 10 s on the
first set-up and 5 s on the others. Each set-up also runs one answer of 10 and one of 250 tokens
per door.

Per cell it reports what `vllm bench serve` reports (TTFT, TPOT, ITL, E2EL) and what the site
added: TTFT and inter-token gap (see bench/load.py for how they are read from the stamps), the
relayed/direct throughput, the site's CPU time per 1,000 relayed tokens (/proc/<pid>/stat, the
site's processes), the site's memory per held stream (peak RSS during a burst minus RSS before
it, over the streams held), the database queries and writes per turn (bench/asgi.py counts them,
in every worker), and the CPU time of PostgreSQL and Redis beside the site's. One py-spy profile
of the first set-up's site is recorded in an extra, unmeasured pass of the 100-stream burst.

--servers daphne,uvicorn,granian (bench/servers.py; default daphne) runs each set-up once per
server, side by side with the same grid: set-up names get the server's (sqlite-1-uvicorn), daphne's
stay as they were (sqlite-1), and the first set-up's profiled pass runs for each server.

--site PATH serves the site from another checkout of the repository (a `git worktree` of an
older commit, say) with this tree's load generator, fake and runner, for a before/after table
from the same benchmark; the site runs on this interpreter, so on this tree's .venv.

    .venv/bin/python -m bench.run [--quick] [--setups sqlite-1,postgresql-3] [--site ../old-tree]
"""

import argparse
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import servers  # noqa: E402
from engine.server.processes import term_on_parent_death  # noqa: E402
from tests.ports import free_port, listening  # noqa: E402
from tests.servers import PostgreSQL, Redis, postgresql_bin, redis_bin  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOORS = ("page", "rest", "openai", "workflow")
DATABASES = ("sqlite", "postgresql")
TICKS = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password-123"


# --- What runs: the set-ups and each one's grid -------------------------------------------------


@dataclass(frozen=True)
class Setup:
    database: str  # "sqlite" or "postgresql"
    workers: int
    url: str = ""  # a database given with --database-url, in place of a scratch one
    server: str = "daphne"  # bench/servers.py's

    @property
    def name(self) -> str:
        # daphne's as before this option, so that earlier results' names still match.
        return f"{self.database}-{self.workers}" + ("" if self.server == "daphne" else f"-{self.server}")

    @classmethod
    def parse(cls, text: str) -> "Setup":
        database, _, workers = text.strip().rpartition("-")
        if database not in DATABASES or not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"{text!r} is not a set-up: <{'|'.join(DATABASES)}>-<workers>, e.g. postgresql-3")
        return cls(database, int(workers))


@dataclass(frozen=True)
class Grid:
    """The cells one set-up runs."""

    bursts: tuple[int, ...]
    doors: tuple[str, ...]
    repeats: int  # rounds of each burst but the largest ones (see rounds)
    arrivals: tuple[float, float] | None  # new streams per second, seconds
    tokens: int  # per answer in a burst
    arrival_tokens: int
    profile_at: int  # the burst of the profiled pass; 0: none

    def rounds(self, concurrency: int) -> int:
        # A round of 500 through four doors takes 80 s on a 2-core box (the page's alone 32 s): one
        # keeps `make bench` within its quarter of an hour, and each of its figures is of 500 streams.
        return 1 if concurrency >= 500 else self.repeats


# --- The processes and what they cost ----------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The process and its descendants: PostgreSQL's backends are its children."""
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


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for member in (member for pid in pids for member in _tree(pid)):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, and the same of children that have ended (a PostgreSQL backend whose
        # connection closed): the parent that reaped them holds their time.
        total += sum(int(field) for field in fields[11:15])
    return total / TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for member in (member for pid in pids for member in _tree(pid)):
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

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, rss_bytes(pids), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pids))

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _child() -> None:
    """In each process started here: room for 500 streams' sockets (a client's and vLLM's each in
    the site), and SIGTERM if this process dies without stopping it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    term_on_parent_death()


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return done.stdout.strip() or "?"


class Bench:
    """One set-up: its database (and Redis), the fake, the site; started, measured, stopped."""

    def __init__(self, args: argparse.Namespace, setup: Setup, site: Path, scratch: Path) -> None:
        self.args, self.setup, self.site = args, setup, site
        self.logs = scratch
        self.logs.mkdir(parents=True)
        self.fake_port, self.site_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
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
            # Set whatever the site's .env says: one worker needs no Redis.
            "REDIS_URL": "",
            # bench/asgi.py: the site's code is the --site tree's, each worker counts its queries here.
            "BENCH_SITE": str(site),
            "BENCH_QUERY_COUNTS": str(scratch / "queries"),
        }
        (scratch / "queries").mkdir()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.postgresql: PostgreSQL | None = None
        self.redis: Redis | None = None
        self.site_pids: list[int] = []
        self.worker_ports: list[int] = []  # each worker's own, beside the site's port they share
        self.server_pids: list[int] = []  # PostgreSQL's and Redis's, whose CPU the site's turns spend too
        self.fake_pid = 0
        self.session = self.csrf = self.bearer = ""
        self.counts: dict[str, Any] = {}  # the queries counted when the last cell ended

    def manage(self, *command: str) -> str:
        done = subprocess.run(
            [sys.executable, str(self.site / "manage.py"), *command],
            cwd=self.site,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def start(self) -> None:
        self._start_servers()
        self.manage("migrate", "-v0")
        make_user = (
            "from django.contrib.auth.models import User; from chat.models import ApiToken; "
            f"user, _ = User.objects.get_or_create(username='bench'); user.set_password('{PASSWORD}'); user.save(); "
            "print(ApiToken.issue(user, 'bench')[1])"
        )
        self.bearer = self.manage("shell", "-c", make_user).strip().splitlines()[-1]
        fake = [sys.executable, "-m", "bench.fake", "--port", str(self.fake_port), "--rate", str(self.args.rate)]
        self._wait_up(fake_process := self._spawn(fake, "fake"), "fake", self.fake_port)
        self.fake_pid = fake_process.pid
        self._start_site()
        for port in self.worker_ports:
            # Each worker's code must be the --site tree's, and each must be counting.
            counts = self.queries(port)
            if counts["site"] != str(self.site) or counts["workers"] != self.setup.workers:
                raise RuntimeError(f"the worker on {port} is not the site asked for ({self.site}): {counts}")
        self._sign_in()

    def _start_servers(self) -> None:
        if self.setup.url:
            self.env["DATABASE_URL"] = self.setup.url
        elif self.setup.database == "sqlite":
            self.env["DATABASE_URL"] = f"sqlite:///{self.logs}/bench.sqlite3"
        else:
            if (programs := postgresql_bin()) is None:
                raise RuntimeError("PostgreSQL set-ups need Debian's postgresql package (make servers)")
            self.postgresql = PostgreSQL(programs, log=self.logs / "postgresql.log").start()
            assert self.postgresql.process
            self.server_pids.append(self.postgresql.process.pid)
            self.env["DATABASE_URL"] = self.postgresql.create_database("bench")
        if self.setup.workers > 1:
            # The workers pass each answer's text and stop requests to each other through Redis.
            if (program := redis_bin()) is None:
                raise RuntimeError("several workers need Debian's redis-server package (make servers)")
            self.redis = Redis(program).start()
            assert self.redis.process
            self.server_pids.append(self.redis.process.pid)
            self.env["REDIS_URL"] = self.redis.url

    def _start_site(self) -> None:
        served, server, count = "bench.asgi:application", self.setup.server, self.setup.workers
        if count == 1 or servers.forks_its_workers(server):
            command = servers.command(server, served, port=self.site_port, workers=count)
            self._wait_up(site := self._spawn(command, f"site-{server}"), f"site-{server}", self.site_port)
            self.site_pids, self.worker_ports = [site.pid], [self.site_port]
        else:
            # As `manage.py up --workers N` starts them (engine/server/site_workers.py, start_site):
            # one listening socket made here and inherited by each worker (--fd), the kernel handing
            # each new connection to one of them. Started here, not through `up`, so that each serves
            # bench/asgi.py and its queries are counted; daphne's also listen on a port of their own,
            # as the tests' workers do (tests/site_server.py), to tell when each is up and to warm it up.
            own = servers.listens_on_its_own_port_too(server)
            self.worker_ports = [free_port() for _ in range(count)] if own else [self.site_port]
            with socket.create_server(("127.0.0.1", self.site_port), backlog=1024) as shared:
                fd = shared.fileno()
                workers = [
                    self._spawn(
                        servers.command(server, served, port=self.worker_ports[n] if own else 0, fd=fd),
                        f"site-{server}-{n}",
                        (fd,),
                    )
                    for n in range(count)
                ]
            for n, worker in enumerate(workers):
                self._wait_up(worker, f"site-{server}-{n}", self.worker_ports[n] if own else self.site_port)
            self.site_pids = [worker.pid for worker in workers]
        # Each worker is up once it has imported bench.asgi (its counts file): where they share the
        # only port, the first to answer says nothing of the others.
        wait_for(self._every_worker_counts, 90, f"{count} {server} workers to import the site")

    def _every_worker_counts(self) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode} (its log in {self.logs})")
        try:
            return bool(self.queries()["workers"] == self.setup.workers)
        except httpx.HTTPError:
            return False  # the shared socket's backlog holds the request until a worker takes it

    def _spawn(self, command: list[str], log: str, fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        # Their logs (daphne's access log, the site's engine lines) go to a file, not between the figures.
        with open(self.logs / f"{log}.log", "ab") as out:
            # From this tree: the fake, and the site's bench.asgi (which imports the --site tree's site).
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, preexec_fn=_child, stdout=out, stderr=subprocess.STDOUT, pass_fds=fds
            )
        self.processes.append(process)
        return process

    def _wait_up(self, process: subprocess.Popen[bytes], log: str, port: int) -> None:
        def up() -> bool:
            if process.poll() is not None:
                tail = (self.logs / f"{log}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{log} exited with {process.returncode}:\n{tail}")
            return listening(port)

        wait_for(up, 60, f"{log} to listen")

    def _sign_in(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.site_port}", timeout=30) as client:
            client.get("/accounts/login/")
            data = {"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
            response = client.post("/accounts/login/", data=data)
            assert response.status_code == 302, response.text
            self.csrf = client.cookies["csrftoken"]
            self.session = "; ".join(f"{name}={value}" for name, value in client.cookies.items())

    def keep_errors(self, out: IO[str]) -> None:
        """The site's and PostgreSQL's logs without their access and routine lines: their errors, if any."""
        noise = ('" 200 ', '" 201 ', '" 302 ', "HTTP Request:", " LOG:  ", "the database system is starting up")
        for log in sorted([*self.logs.glob("site-*.log"), *self.logs.glob("postgresql.log")]):
            lines = log.read_text(errors="replace").splitlines()
            kept = [line for line in lines if not any(n in line for n in noise)]
            out.write(f"=== {self.setup.name}, {log.name} ===\n" + "\n".join(kept[-5000:]) + "\n")

    def stop(self) -> None:
        # All at once, as `up` stops its workers (each finishes its answers' writes): between cells
        # nothing streams, so the fake's going too is nothing to the site.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis:
            self.redis.stop()
        if self.postgresql:
            self.postgresql.stop()

    def queries(self, port: int = 0) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{port or self.site_port}/__bench__/queries", timeout=10)
        counts: dict[str, Any] = response.json()
        return counts

    def _settled_queries(self) -> dict[str, Any]:
        """The counts once the site has finished writing the turns (their last writes follow the stream)."""
        counts = self.queries()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.3)
            again = self.queries()
            if again == counts:
                break
            counts = again
        return counts

    # --- One cell: one door under one load -------------------------------------------------------

    def cell(
        self,
        door: str,
        tokens: int,
        concurrency: int = 0,
        arrivals: tuple[float, float] | None = None,
        port: int = 0,  # one worker's own, not the port they share
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "door": door,
            "tokens": tokens,
            "site": f"127.0.0.1:{port or self.site_port}",
            "fake": f"127.0.0.1:{self.fake_port}",
            "session": self.session,
            "csrf": self.csrf,
            "bearer": self.bearer,
        }
        if arrivals:
            spec["arrivals"] = {"rate": arrivals[0], "seconds": arrivals[1]}
        else:
            spec["concurrency"] = concurrency
        # Nothing ran since the last cell's counts settled.
        queries_before = self.counts or self._settled_queries()
        site_cpu, servers_cpu, fake_cpu = (
            cpu_seconds(self.site_pids),
            cpu_seconds(self.server_pids),
            cpu_seconds([self.fake_pid]),
        )
        rss_before = rss_bytes(self.site_pids)
        started = time.monotonic()
        with PeakMemory(self.site_pids) as memory:
            load = subprocess.run(
                [sys.executable, "-m", "bench.load", json.dumps(spec)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                preexec_fn=_child,
            )
        wall = time.monotonic() - started
        if load.returncode:
            raise RuntimeError(f"the load generator failed: {load.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(load.stdout)
        result["site_cpu_s"] = cpu_seconds(self.site_pids) - site_cpu
        result["servers_cpu_s"] = cpu_seconds(self.server_pids) - servers_cpu if self.server_pids else None
        result["fake_cpu_s"] = cpu_seconds([self.fake_pid]) - fake_cpu
        result["wall_s"] = wall
        queries_after = self.counts = self._settled_queries()
        relayed = door != "direct"
        held = concurrency or None
        result["site_kb_per_stream"] = (memory.peak - rss_before) / 1024 / held if relayed and held else None
        result["site_cpu_ms_per_1k_tokens"] = (
            result["site_cpu_s"] * 1e6 / result["tokens"] if relayed and result["tokens"] else None
        )
        if relayed and result["streams"]:
            result["queries_per_turn"] = (queries_after["queries"] - queries_before["queries"]) / result["streams"]
            result["writes_per_turn"] = (queries_after["writes"] - queries_before["writes"]) / result["streams"]
        return result

    @contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """py-spy on the site (its first worker) while the block runs: a flame graph and the raw stacks."""
        spies = []
        for form, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            # 50 samples a second each: at 200 two py-spys fell 20 s behind on a busy 2-core box.
            command = ["py-spy", "record", "--nonblocking", "--subprocesses", "--rate", "50", "--format", form]
            command += ["-o", str(RESULTS / f"{name}.{suffix}"), "--pid", str(self.site_pids[0])]
            log = open(self.logs / f"py-spy-{form}.log", "ab")  # closed when the process ends
            spies.append(
                subprocess.Popen(
                    [str(Path(sys.executable).parent / command[0]), *command[1:]],
                    stdout=log,
                    stderr=log,
                    preexec_fn=term_on_parent_death,
                )
            )
        time.sleep(1)  # py-spy attaches
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            for spy in spies:
                spy.wait(60)


def measure(bench: Bench, grid: Grid, runs: list[dict[str, Any]], profile: str) -> None:
    """Every cell of the grid on one set-up, each run appended to `runs` as it ends."""
    setup = bench.setup.name

    def round_of(load: str, repeat: int, **cell: Any) -> None:
        # Straight to the fake first, then each door, in a rotating order so no door always goes first.
        doors = grid.doors[repeat % len(grid.doors) :] + grid.doors[: repeat % len(grid.doors)]
        direct = bench.cell("direct", **cell) | {"setup": setup, "load": load, "repeat": repeat}
        runs.append(direct)
        for door in doors:
            run = bench.cell(door, **cell) | {"setup": setup, "load": load, "repeat": repeat}
            run["throughput_ratio"] = run["throughput"] / direct["throughput"] if direct["throughput"] else None
            runs.append(run)
            print(
                f"  {setup} {load} #{repeat} {door}: added TTFT p50 {_ms(run['added_TTFT']['p50'])} ms, "
                f"added ITL p99 {_ms(run['added_ITL']['p99'])} ms, throughput x{run['throughput_ratio'] or 0:.2f}, "
                f"errors {run['error_count']}",
                flush=True,
            )

    # Warm up: imports, first connections, each worker through its own port (or, where the server
    # forks its workers on one port, enough streams that each gets some).
    for port in bench.worker_ports:
        bench.cell(grid.doors[0], tokens=5, concurrency=5 * bench.setup.workers // len(bench.worker_ports), port=port)
    for concurrency in grid.bursts:
        for repeat in range(grid.rounds(concurrency)):
            round_of(f"burst {concurrency}", repeat, tokens=grid.tokens, concurrency=concurrency)
        if concurrency == grid.profile_at:
            with bench.profiled(profile):
                for door in grid.doors:
                    bench.cell(door, tokens=grid.tokens, concurrency=concurrency)
    if grid.arrivals:
        rate, seconds = grid.arrivals
        round_of(f"arrivals {rate:g}/s", 0, tokens=grid.arrival_tokens, arrivals=(rate, seconds))
    # Queries per turn must not grow with the answer: one short and one long answer per door.
    for tokens in (10, 250):
        # Direct first: if the site is still overloaded from the arrivals, the fake is not to blame.
        for door in ("direct", *grid.doors):
            run = bench.cell(door, tokens=tokens, concurrency=1)
            load = f"1 answer of {tokens} tokens"
            runs.append(run | {"setup": setup, "load": load, "repeat": 0, "throughput_ratio": None})


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
    """One row per (set-up, load, door), in the order they ran: each figure the median over the repeats."""
    rows: list[dict[str, Any]] = []
    for setup, load, door in dict.fromkeys((run["setup"], run["load"], run["door"]) for run in runs):
        mine = [run for run in runs if (run["setup"], run["load"], run["door"]) == (setup, load, door)]
        row: dict[str, Any] = {"setup": setup, "load": load, "door": door, "repeats": len(mine)}
        for name, (figure, rank) in FIGURES.items():
            row[name] = _median([run[figure][rank] for run in mine])
        for name in ("throughput", "site_cpu_ms_per_1k_tokens", "site_kb_per_stream", "queries_per_turn"):
            row[name] = _median([run.get(name) for run in mine])
        row["writes_per_turn"] = _median([run.get("writes_per_turn") for run in mine])
        ratios = [run["throughput_ratio"] for run in mine if run.get("throughput_ratio") is not None]
        row["relayed/direct throughput"] = _median(ratios) if door != "direct" else 1.0
        for name in ("site_cpu_s", "servers_cpu_s", "fake_cpu_s", "load_cpu_s", "wall_s"):
            row[name] = _median([run.get(name) for run in mine])
        row["errors"] = sum(run["error_count"] for run in mine)
        row["error_examples"] = sorted({e for run in mine for e in run["errors"]})[:3]
        rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| set-up | load | door | added TTFT p50 / p99 ms | added ITL p50 / p99 ms | token delay p99 ms "
        "| relayed/direct throughput | site CPU ms per 1k tokens | site KB per held stream "
        "| queries (writes) per turn | CPU s: site / PostgreSQL+Redis / fake / load (wall) | errors |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in rows:
        queries = (
            f"{row['queries_per_turn']:.1f} ({row['writes_per_turn']:.1f})"
            if row["queries_per_turn"] is not None
            else "-"
        )
        cpu = (
            f"{row['site_cpu_s']:.1f} / {_seconds(row['servers_cpu_s'])} / {row['fake_cpu_s']:.1f} "
            f"/ {row['load_cpu_s']:.1f} ({row['wall_s']:.0f})"
        )
        lines.append(
            f"| {row['setup']} | {row['load']} | {row['door']} "
            f"| {_ms(row['added TTFT p50'])} / {_ms(row['added TTFT p99'])} "
            f"| {_ms(row['added ITL p50'])} / {_ms(row['added ITL p99'])} | {_ms(row['token delay p99'])} "
            f"| {_ratio(row['relayed/direct throughput'])} | {_ms(row['site_cpu_ms_per_1k_tokens'])} "
            f"| {_ms(row['site_kb_per_stream'])} | {queries} | {cpu} | {row['errors']} |"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """A column per set-up that ran several doors, one line per door; then, with several set-ups, a
    door that every set-up ran, one line per set-up. The rows' y axes are shared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    bursts = [row for row in rows if row["load"].startswith("burst")]
    setups = list(dict.fromkeys(row["setup"] for row in bursts))
    if not setups:
        return
    figures = (
        ("added TTFT p50", "added TTFT p50 (ms)"),
        # Not the added ITL: tokens bunched into one event make it negative, which a log axis cannot show.
        ("token delay p99", "token delay p99 (ms):\nfake sent to client got"),
        ("relayed/direct throughput", "relayed / direct throughput"),
    )
    ran = {(row["setup"], row["door"]) for row in bursts}
    shared = [door for door in ("openai", *DOORS) if all((setup, door) in ran for setup in setups)]
    compared = shared[:1] if len(setups) > 1 else []
    # A set-up that ran one door beside the direct run is all in the comparison.
    detailed = [setup for setup in setups if len({door for s, door in ran if s == setup}) > 2 or not compared]
    columns = len(detailed) + len(compared)
    figure, axes = plt.subplots(3, columns, figsize=(1 + 4 * columns, 9), sharex=True, sharey="row", squeeze=False)

    def plot(column: int, mine: list[dict[str, Any]], **style: Any) -> None:
        x = [int(row["load"].split()[1]) for row in mine]
        for line, (name, _) in enumerate(figures):
            # A log axis cannot show 0 or less: the direct floor's TTFT can round to it.
            y = [row[name] if line == 2 else max(row[name] or 0, 0.01) for row in mine]
            axes[line][column].plot(x, y, **style)

    doors = {door: f"C{index}" for index, door in enumerate(("direct", *DOORS))}
    for column, setup in enumerate(detailed):
        axes[0][column].set_title(setup)
        for door, colour in doors.items():
            if mine := [row for row in bursts if row["setup"] == setup and row["door"] == door]:
                plot(column, mine, marker="o", color=colour)
    for door in compared:
        axes[0][-1].set_title(f"{door} door: the set-ups side by side")
        for index, setup in enumerate(setups):
            mine = [row for row in bursts if row["setup"] == setup and row["door"] == door]
            # Colours the doors do not use.
            plot(columns - 1, mine, marker="osD^v"[index % 5], color=f"C{5 + index % 5}", label=setup)
        axes[0][-1].legend(fontsize="small")
    sizes = sorted({int(row["load"].split()[1]) for row in bursts})
    for line, (_, label) in enumerate(figures):
        axes[line][0].set_ylabel(label)
        for axis in axes[line]:
            axis.set_xscale("log")
            axis.set_xticks(sizes, [str(size) for size in sizes])
            axis.xaxis.set_minor_locator(NullLocator())
            axis.grid(True, which="both", alpha=0.3)
            if line < 2:
                axis.set_yscale("log")
    for axis in axes[-1]:
        axis.set_xlabel("concurrent streams (burst)")
    axes[2][0].set_ylim(0, 1.1)
    handles = [Line2D([], [], color=colour, marker="o", label=door) for door, colour in doors.items()]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=100)


# --- The run ------------------------------------------------------------------------------------

DEFAULT_SETUPS = "sqlite-1,sqlite-3,postgresql-1,postgresql-3"
# --quick changes these defaults; what is given on the command line stands.
FULL = {"concurrency": "1,10,100,200,500", "repeats": 3, "arrivals": "20x20", "tokens": 100, "other_arrivals": "20x10"}
QUICK = {"concurrency": "1,10,100", "repeats": 1, "arrivals": "20x10", "tokens": 50, "other_arrivals": "20x5"}


def _arrivals(text: str) -> tuple[float, float] | None:
    if text == "none":
        return None
    rate, seconds = (float(part) for part in text.split("x"))
    return rate, seconds


def _doors(text: str) -> tuple[str, ...]:
    doors = tuple(door for door in text.split(",") if door)
    if not doors or any(door not in DOORS for door in doors):
        raise ValueError(f"doors are some of {', '.join(DOORS)}, not {text!r}")
    return doors


def arguments() -> tuple[argparse.Namespace, list[Setup], list[Grid]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1, 10 and 100 streams, one round, shorter arrivals")
    parser.add_argument(
        "--setups",
        help=f"database-workers, one after the other, the first with the full grid (default {DEFAULT_SETUPS})",
    )
    parser.add_argument("--concurrency", help="burst sizes (default 1,10,100,200,500; --quick 1,10,100)")
    parser.add_argument("--doors", default=",".join(DOORS), help="the first set-up's doors (default %(default)s)")
    parser.add_argument("--repeats", type=int, help="the first set-up's rounds of each burst below 500 (default 3)")
    parser.add_argument(
        "--arrivals", help="the first set-up's new streams per second x seconds, or 'none' (20x20; --quick 20x10)"
    )
    parser.add_argument("--other-doors", default="openai", help="the other set-ups' doors (default %(default)s)")
    parser.add_argument("--other-repeats", type=int, default=1, help="the other set-ups' rounds (default 1)")
    parser.add_argument("--other-arrivals", help="the other set-ups' arrivals (default 20x10; --quick 20x5)")
    parser.add_argument("--tokens", type=int, help="tokens per answer in a burst (default 100; --quick 50)")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream (default %(default)s)")
    parser.add_argument("--arrival-tokens", type=int, default=200)
    parser.add_argument(
        "--profile-at", type=int, default=100, help="burst size of the first set-up's profiled pass (0: none)"
    )
    parser.add_argument("--site", type=Path, default=ROOT, help="the checkout whose site is served (default: this one)")
    parser.add_argument("--workers", type=int, help="one set-up: SQLite (or --database-url) with this many workers")
    parser.add_argument("--database-url", default="", help="one set-up on this (empty) database, not a scratch one")
    parser.add_argument("--name", default="", help="results file name (default: a timestamp)")
    parser.add_argument(
        "--servers",
        default="daphne",
        help=f"ASGI servers, each on every set-up with that set-up's grid (some of {', '.join(servers.SERVERS)}; "
        "default %(default)s)",
    )
    args = parser.parse_args()
    for option, value in (QUICK if args.quick else FULL).items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    args.site = args.site.resolve()
    if not (args.site / "manage.py").is_file():
        parser.error(f"--site {args.site}: no manage.py there")
    try:
        if args.setups and (args.workers or args.database_url):
            raise ValueError("--workers and --database-url name one set-up: not with --setups")
        if args.database_url:
            scheme = args.database_url.split(":", 1)[0]
            database = "postgresql" if scheme.startswith("postgres") else scheme
            setups = [Setup(database, args.workers or 1, args.database_url)]
        elif args.workers:
            setups = [Setup("sqlite", args.workers)]
        else:
            setups = [Setup.parse(text) for text in (args.setups or DEFAULT_SETUPS).split(",")]
        chosen = [server for server in args.servers.split(",") if server]
        if not chosen or any(server not in servers.SERVERS for server in chosen):
            raise ValueError(f"servers are some of {', '.join(servers.SERVERS)}, not {args.servers!r}")
        bursts = tuple(int(n) for n in args.concurrency.split(","))
        first = Grid(
            bursts,
            _doors(args.doors),
            args.repeats,
            _arrivals(args.arrivals),
            args.tokens,
            args.arrival_tokens,
            args.profile_at,
        )
        others = Grid(
            bursts,
            _doors(args.other_doors),
            args.other_repeats,
            _arrivals(args.other_arrivals),
            args.tokens,
            args.arrival_tokens,
            0,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # Each server on each set-up, side by side: the first set-up's full grid for every server.
    grids = [first] + [others] * (len(setups) - 1)
    return (
        args,
        [replace(setup, server=server) for setup in setups for server in chosen],
        [grid for grid in grids for _ in chosen],
    )


def main() -> None:
    args, setups, grids = arguments()
    # A `kill` of this run ends it as Ctrl-C does: through the finally blocks that stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    site = f"{args.site} at {_commit(args.site)}"
    print(f"the site: {site}; the benchmark: {ROOT} at {_commit(ROOT)}", flush=True)
    runs: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    took: dict[str, float] = {}
    loadavg = {"before": os.getloadavg()}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch, open(RESULTS / f"{name}-site-errors.log", "w") as errors:
        for setup, grid in zip(setups, grids, strict=True):
            started = time.monotonic()
            print(f"{setup.name}: {len(grid.bursts)} bursts x {grid.repeats} rounds, doors {','.join(grid.doors)}")
            bench = Bench(args, setup, args.site, Path(scratch) / setup.name)
            try:
                bench.start()
                suffix = "" if setup.server == "daphne" else f"-{setup.server}"
                measure(bench, grid, runs, f"profile-{name}{suffix}")
            except Exception as exc:
                # The other set-ups still run: a long run is not lost to one set-up's failure.
                failed[setup.name] = f"{type(exc).__name__}: {exc}"[:2000]
                traceback.print_exc()
            finally:
                bench.stop()
                bench.keep_errors(errors)
            took[setup.name] = time.monotonic() - started
            print(f"{setup.name}: {took[setup.name]:.0f} s" + (" (failed)" if setup.name in failed else ""), flush=True)
    loadavg["after"] = os.getloadavg()

    rows = summarise(runs)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores",
        "loadavg": loadavg,
        "python": platform.python_version(),
        "commit": _commit(ROOT),
        "site": str(args.site),
        "site_commit": _commit(args.site),
        "setups": {
            setup.name: {
                "database": setup.database,
                "workers": setup.workers,
                "server": setup.server,
                "grid": asdict(grid),
                "seconds": took.get(setup.name),
            }
            for setup, grid in zip(setups, grids, strict=True)
        },
        "failed": failed,
        "seconds": time.monotonic() - began,
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    chart(rows, RESULTS / f"{name}.png")
    print()
    print(table(rows))
    profile = f", profile-{name}.svg" if grids[0].profile_at in grids[0].bursts else ""
    before, after = loadavg["before"][0], loadavg["after"][0]
    print(f"\n{site}; {meta['seconds']:.0f} s; load average {before:.1f} before, {after:.1f} after")
    print(f"wrote {RESULTS / name}.json and .png{profile}")
    if failed:
        sys.exit("failed: " + "; ".join(f"{setup}: {why.splitlines()[0]}" for setup, why in failed.items()))


if __name__ == "__main__":
    main()
