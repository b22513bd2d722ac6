"""How fast the site passes an answer through, measured over real sockets. Prints figures.

The site runs in its own daphne process on a scratch SQLite database, against the fake vLLM
from the tests sending deltas at a fixed rate (--delay seconds apart; 0.002 is a fast GPU's
500 tokens/s), so what is measured is the site's own overhead: from the browser's POST to the
first delta it receives, and how much longer than the model's own generation time the whole
answer takes to reach the browser, for one answer and for several at once.

    .venv/bin/python bench/stream.py [--deltas 1000] [--delay 0.002] [--concurrent 8]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.accounts import login  # noqa: E402
from tests.fake_vllm import FakeVLLM  # noqa: E402
from tests.site_server import SiteProcess, csrf_headers  # noqa: E402


def one_answer(site_url: str, text_expected: str) -> tuple[float, float, int]:
    with httpx.Client(base_url=site_url, timeout=60) as client:
        login(client, "bench", "bench-password-123")
        started = time.perf_counter()
        # As the page's htmx form sends it; the answer's stream URL is in the turn it gets back.
        headers = {**csrf_headers(client), "HX-Request": "true"}
        sent = client.post("/c/new/send", data={"prompt": "Go", "max_tokens": "2047"}, headers=headers)
        streaming = re.search(r'data-stream-url="([^"]+)"', sent.text)
        assert streaming is not None, sent.text
        url = streaming[1]
        first = None
        events = 0
        text = ""
        with client.stream("GET", url) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and first is None:
                    first = time.perf_counter() - started
                if line.startswith('data: {"text"'):
                    events += 1
                    text += json.loads(line[5:])["text"]
                elif line.startswith("event: error"):
                    raise SystemExit(f"the answer failed: {next(response.iter_lines())}")
                elif line.startswith("event: done"):
                    break
        assert text == text_expected, "the browser did not get the whole answer"
        return first or 0.0, time.perf_counter() - started, events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deltas", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, FakeVLLM(max_model_len=100_000) as fake:
        fake.reply = [f" w{i}" for i in range(args.deltas)]
        fake.token_delay = args.delay
        expected = "".join(fake.reply)
        generation = args.deltas * args.delay
        env = {
            "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
            "VLLM_BASE_URL": fake.base_url,
            "CHAT_CONTEXT_LENGTH": "100000",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "bench-only-secret"),
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env={**os.environ, **env}, check=True)
        create = (
            "from django.contrib.auth.models import User; "
            "User.objects.create_user('bench', password='bench-password-123')"
        )
        subprocess.run([*manage, "shell", "-c", create], cwd=ROOT, env={**os.environ, **env}, check=True)
        site = SiteProcess(env).start()
        try:
            one_answer(site.url, expected)  # warm up: imports, first connections
            first, total, events = one_answer(site.url, expected)
            print(f"model generation time per answer: {generation:.2f} s ({args.deltas} deltas)")
            print(
                f"one answer: first delta after {first * 1000:.1f} ms, complete after {total:.2f} s "
                f"(+{(total - generation) * 1000:.0f} ms over the model), {events} SSE delta events"
            )

            results: list[tuple[float, float, int]] = []
            threads = [
                threading.Thread(target=lambda: results.append(one_answer(site.url, expected)))
                for _ in range(args.concurrent)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            firsts = [r[0] * 1000 for r in results]
            print(
                f"{args.concurrent} answers at once: first delta median {statistics.median(firsts):.1f} ms, "
                f"worst {max(firsts):.1f} ms; all complete after {wall:.2f} s "
                f"(+{(wall - generation) * 1000:.0f} ms over the model)"
            )
        finally:
            site.stop()


if __name__ == "__main__":
    main()
