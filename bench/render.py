"""How long the chat page's main thread is busy at a time while a long answer streams. Prints figures.

The site runs in its own daphne process on a scratch SQLite database, against the fake vLLM from
the tests streaming a long markdown answer (headings, paragraphs, lists, tables, code, math: what a
model writes) token by token, --delay seconds apart. Debian's Chromium shows it on the chat page,
as a person would; the page records every task of its main thread over 50 ms (the Long Tasks API,
a PerformanceObserver for 'longtask'), the long animation frames and the longest gap between two
frames, and a Chromium trace gives each task's time on the clock and on the CPU (on a machine busy
with other work, the two differ). The same is then measured for opening the page with the answer.

    .venv/bin/python bench/render.py [--tokens 20000] [--delay 0.001] [--shape mixed|code]

`--shape code` streams one single fenced code block, the worst case for the open chunk that is
rendered again on every frame.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.fake_vllm import FakeVLLM  # noqa: E402
from tests.site_server import SiteProcess  # noqa: E402

# Long tasks, and the longest wait between two frames, from the page's first byte on.
RECORD_THE_MAIN_THREAD = """
window.longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
// The long animation frames (over 50 ms), with how much of each was script and how much style and
// layout: on a busy machine a frame can be long for want of a CPU, with little work of its own.
window.longFrames = [];
new PerformanceObserver((list) => {
  for (const frame of list.getEntries()) {
    const script = frame.scripts.reduce((sum, s) => sum + s.duration, 0);
    const layout = frame.startTime + frame.duration - frame.styleAndLayoutStart;
    window.longFrames.push([frame.duration, script, layout]);
  }
}).observe({ type: "long-animation-frame", buffered: true });
window.longestFrameGap = 0;
let lastFrame = 0;
const onFrame = (now) => {
  if (lastFrame && window.measuring) window.longestFrameGap = Math.max(window.longestFrameGap, now - lastFrame);
  lastFrame = now;
  requestAnimationFrame(onFrame);
};
requestAnimationFrame(onFrame);
"""

ANSWERED = "() => document.querySelector('#thread article.assistant:not(.streaming) .status')?.textContent === ''"

SECTION = """## Part {n}: what to know

Running a model **locally** keeps every prompt on your machine, and with *vLLM* the throughput
is close to a hosted service. Here is a short overview of the trade-offs, with `inline code`.

1. Privacy: nothing leaves the host.
2. Cost: a GPU you already own.
3. Latency: no network round trip, so time to first token is `{n}` ms lower.

| Setting | Default | Meaning |
| ------- | ------: | ------- |
| temperature | 0.7 | how adventurous the sampling is |
| max_tokens | 1024 | how long an answer may grow |

The energy is $E = mc^2$, and the loss is

$$
L = -\\frac{{1}}{{N}} \\sum_{{i=1}}^{{N}} y_i \\log \\hat y_i
$$

```python
def fit(model, data, epochs={n}):
    for epoch in range(epochs):
        for batch in data:
            loss = model.step(batch)
            if loss < 0.01:
                return model
    return model
```

> Tip: keep answers short with `max_tokens`, and see [the docs](https://docs.vllm.ai/) for more.

"""


def tokens_of(text: str) -> list[str]:
    """Roughly as a tokenizer cuts text: words with their leading space, line breaks apart."""
    tokens: list[str] = []
    for line in text.splitlines(keepends=True):
        words = line.rstrip("\n").split(" ")
        tokens += [word if i == 0 else f" {word}" for i, word in enumerate(words) if word or i == 0]
        if line.endswith("\n"):
            tokens.append("\n")
    return [token for token in tokens if token]


def long_answer(tokens: int, shape: str) -> list[str]:
    if shape == "code":
        lines = (f"    value_{i} = compute(value_{i - 1}, step={i})  # line {i}\n" for i in itertools.count(1))
        reply = tokens_of("Here is the whole program:\n\n```python\ndef main():\n")
        while len(reply) < tokens - 1:
            reply += tokens_of(next(lines))
        return [*reply[: tokens - 1], "```"]
    reply = []
    for n in itertools.count(1):
        reply += tokens_of(SECTION.format(n=n))
        if len(reply) >= tokens:
            return reply[:tokens]
    raise AssertionError  # unreachable


def main_thread_tasks(trace: bytes) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of each task the pages' main threads ran, from a Chromium trace."""
    events = json.loads(trace)["traceEvents"]
    main_threads = {
        (e["pid"], e["tid"]) for e in events if e.get("name") == "thread_name" and e["args"]["name"] == "CrRendererMain"
    }
    return [
        (e["dur"] / 1000, e.get("tdur", 0) / 1000)
        for e in events
        if e.get("name") == "ThreadControllerImpl::RunTask"
        and e.get("ph") == "X"
        and (e["pid"], e["tid"]) in main_threads
    ]


def report(page: Page, label: str, tasks_traced: list[tuple[float, float]]) -> None:
    tasks, frames, gap = page.evaluate("[window.longTasks, window.longFrames, window.longestFrameGap]")
    longest = "longest " + ", ".join(f"{t:.0f}" for t in sorted(tasks, reverse=True)[:5]) + " ms" if tasks else "none"
    print(f"{label}: {len(tasks)} main-thread tasks over 50 ms ({longest}); longest frame gap {gap:.0f} ms")
    for duration, script, layout in sorted(frames, reverse=True)[:3]:
        print(f"  a {duration:.0f} ms frame: {script:.0f} ms of script, {layout:.0f} ms of style and layout")
    # On a machine shared with other work, a task takes longer on the clock than the CPU it used.
    wall, cpu = max(tasks_traced), max(tasks_traced, key=lambda task: task[1])
    print(
        f"  traced: longest task {wall[0]:.0f} ms on the clock ({wall[1]:.0f} ms of CPU); "
        f"most CPU in one task {cpu[1]:.0f} ms ({cpu[0]:.0f} ms on the clock); "
        f"{sum(1 for task in tasks_traced if task[1] > 50)} tasks over 50 ms of CPU"
    )
    page.evaluate("window.longTasks = []; window.longFrames = []; window.longestFrameGap = 0")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--delay", type=float, default=0.001)
    parser.add_argument("--shape", choices=["mixed", "code"], default="mixed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, FakeVLLM(max_model_len=100_000) as fake:
        fake.reply = long_answer(args.tokens, args.shape)
        fake.token_delay = args.delay
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
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(base_url=site.url, viewport={"width": 1280, "height": 800})
                page.add_init_script(RECORD_THE_MAIN_THREAD)
                page.goto("/accounts/login/")
                page.get_by_label("Username").fill("bench")
                page.get_by_label("Password").fill("bench-password-123")
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#backend")).to_have_text("model server up")
                page.locator("input[name=max_tokens]").fill(str(args.tokens + 10))
                page.evaluate("window.longTasks = []; window.longFrames = []; window.measuring = true")

                browser.start_tracing(page=page, categories=["toplevel"])
                started = time.perf_counter()
                page.get_by_role("textbox", name="Message").fill("Tell me everything")
                page.get_by_role("textbox", name="Message").press("Enter")
                answer = page.locator("#thread article.assistant")
                # Checked twice a second by a cheap query: Playwright's own locator checks would load the
                # page's main thread with work of their own over the growing answer.
                page.wait_for_function(ANSWERED, polling=500, timeout=600_000)
                expect(answer.locator(".status")).to_have_text("")
                streamed = time.perf_counter() - started
                chars = len("".join(fake.reply))
                print(
                    f"{args.tokens} tokens ({chars} characters, --shape {args.shape}) streamed in {streamed:.1f} s; "
                    f"{answer.locator('.body .block').count()} chunks"
                )
                report(page, "while streaming", main_thread_tasks(browser.stop_tracing()))

                browser.start_tracing(page=page, categories=["toplevel"])
                page.reload()
                expect(answer.locator(".body .block").first).to_be_visible()
                page.wait_for_timeout(1000)  # the rest renders in slices; the entries come after the tasks
                page.evaluate("window.measuring = true")
                report(page, "loading the page with it", main_thread_tasks(browser.stop_tracing()))
                browser.close()
        finally:
            site.stop()


if __name__ == "__main__":
    main()
