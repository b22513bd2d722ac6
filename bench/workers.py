"""What the site adds to streaming, with 1 and 3 workers, on SQLite and on PostgreSQL. Prints a table.

The fake vLLM from the tests sends every stream at a fixed rate (--delay seconds between deltas:
0.02 is 50 tokens/s). At each level of concurrency the same number of streams goes to the fake
directly, then through the site's `/v1/chat/completions`; the figures are the time to first token
the site adds (median) and the relayed throughput as a share of the direct one (all tokens
received, over the time from the first request to the last token). PostgreSQL and Redis are the
tests' own (tests/servers.py: Debian's `postgresql` and `redis-server`); SQLite runs with Redis
too when there are 3 workers.

    .venv/bin/python bench/workers.py [--streams 10,100,200] [--deltas 100] [--delay 0.02]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import django
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_vllm import FakeVLLM  # noqa: E402
from tests.servers import PostgreSQL, Redis, postgresql_bin, redis_bin  # noqa: E402
from tests.site_server import SiteWorkers  # noqa: E402

MODEL = "qwen2-7b-instruct"


async def one_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the last, tokens) of one streamed completion."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go"}], "stream": True, "max_tokens": 1000}
    started = time.perf_counter()
    first, tokens = 0.0, 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.is_error:
            raise SystemExit(f"{url} answered {response.status_code}: {(await response.aread()).decode()[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                tokens += 1
                first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, tokens


async def many_streams(url: str, headers: dict[str, str], streams: int) -> tuple[float, float]:
    """(median time to first token, tokens per second over all streams)."""
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, headers) for _ in range(streams)))
        wall = time.perf_counter() - started
    return statistics.median(r[0] for r in results), sum(r[2] for r in results) / wall


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True
    )
    return done.stdout.decode().strip()


def site_env(database_url: str, redis_url: str, fake: FakeVLLM) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VLLM_BASE_URL": fake.base_url,
        "CHAT_CONTEXT_LENGTH": "100000",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "bench-only-secret"),
        "CHAT_LOG_LEVEL": "WARNING",
        # One user asks for every stream: the per-person limits would refuse all but 3.
        "CHAT_MAX_ANSWERS_AT_ONCE": "0",
        "CHAT_MAX_ANSWERS_PER_MINUTE": "0",
    }
    manage(env, "migrate", "-v0")
    manage(env, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('bench')")
    env["TOKEN"] = manage(env, "createtoken", "bench")
    return env


def main() -> None:
    # The workers' command is made as `manage.py up` makes it, from the site's settings.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="10,100,200")
    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.02)
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    pg_bin, redis_program = postgresql_bin(), redis_bin()
    if pg_bin is None or redis_program is None:
        raise SystemExit("PostgreSQL and redis-server are needed: apt-get install postgresql redis-server")

    rows: list[tuple[str, int, float, float]] = []
    postgresql, redis = PostgreSQL(pg_bin).start(), Redis(redis_program).start()
    try:
        with tempfile.TemporaryDirectory() as scratch, FakeVLLM(max_model_len=100_000) as fake:
            fake.reply = [f" w{i}" for i in range(args.deltas)]
            fake.token_delay = args.delay
            direct = {n: asyncio.run(many_streams(f"{fake.base_url}/chat/completions", {}, n)) for n in levels}
            for database in ("SQLite", "PostgreSQL"):
                for workers in (1, 3):
                    name = f"{database}, {workers} worker{'s' if workers > 1 else ''}"
                    url = (
                        f"sqlite:///{scratch}/{workers}.sqlite3"
                        if database == "SQLite"
                        else postgresql.create_database(f"bench_{workers}")
                    )
                    env = site_env(url, redis.url, fake)
                    site = SiteWorkers(env, workers=workers, quiet=True).start()
                    try:
                        headers = {"Authorization": f"Bearer {env['TOKEN']}"}
                        # Warm up every worker (imports, connections) before measuring.
                        asyncio.run(many_streams(f"{site.url}/v1/chat/completions", headers, workers * 3))
                        for n in levels:
                            first, rate = asyncio.run(many_streams(f"{site.url}/v1/chat/completions", headers, n))
                            rows.append((name, n, first - direct[n][0], rate / direct[n][1]))
                    finally:
                        site.stop()
    finally:
        redis.stop()
        postgresql.stop()

    print(f"fake vLLM: {args.deltas} deltas a stream, {1 / args.delay:.0f} tokens/s each")
    print(f"{'set-up':<26}{'streams':>8}{'added TTFT (ms)':>18}{'relayed/direct':>16}")
    for name, n, added, share in rows:
        print(f"{name:<26}{n:>8}{added * 1000:>18.0f}{share:>16.2f}")


if __name__ == "__main__":
    main()
