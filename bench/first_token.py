"""From a fresh clone to the first streamed token in the browser: how long a new user waits.

Clones this repository (its current commit) into a scratch folder, runs the README's `make run`
there, and, once it prints the chat's address, plays the new user in headless Chromium: opens the
address, creates the first account, asks a question, and notes when the first token of the answer
shows on the page. Prints the time from `make run` to each step, then stops it all (Ctrl-C).

    .venv/bin/python bench/first_token.py          # vLLM's environment and the starter model cached
    .venv/bin/python bench/first_token.py --cold   # neither: both made in the scratch folder

Either way the clone's own .venv and .env are new, as on a fresh clone (pip's download cache
still helps there); --cold also installs vLLM (about 3.5 GB) and builds the starter model.
Ports are free ones; any other setting (VLLM_CPUS, VLLM_MODEL...) comes from this environment.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PASSWORD = "first-run-bench-password"
QUESTION = "What is the capital of France?"
# A cold start installs vLLM: give it as long as `runvllm` itself would.
READY_TIMEOUT = 60 * 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MakeRun:
    """`make run` in the clone, in a process group of its own, its output echoed with timestamps."""

    def __init__(self, clone: Path, env: dict[str, str], port: int) -> None:
        self.started = time.monotonic()
        self.address: str | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            ["make", "run", f"PORT={port}"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"  [{self.elapsed():6.1f} s] {line.rstrip()}", flush=True)
            if match := re.search(r"The chat is at (\S+)", line):
                self.address = match.group(1)
                self._ready.set()
        self._ready.set()  # it ended: nobody waits for an address any more

    def wait_for_address(self) -> str:
        if not self._ready.wait(READY_TIMEOUT) or self.address is None:
            raise SystemExit(f"make run ended or timed out without serving the chat (exit {self.process.poll()})")
        return self.address

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def first_token(address: str, run: MakeRun) -> dict[str, float]:
    marks: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(address)
        page.get_by_label("Username").fill("ada")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Create account").click()
        page.get_by_role("textbox", name="Message").wait_for()
        marks["account created, chat page shown"] = run.elapsed()
        model = page.locator("#model .model-name").inner_text()
        box = page.get_by_role("textbox", name="Message")
        box.fill(QUESTION)
        box.press("Enter")
        answer = page.locator("#thread article.assistant .body").first
        expect(answer).not_to_have_text("", timeout=600_000)
        marks["first token on the page"] = run.elapsed()
        expect(page.locator("#thread article.assistant").first).to_have_class(
            re.compile(r"\bcomplete\b"), timeout=600_000
        )
        marks["answer complete"] = run.elapsed()
        print(f"  {model} answered: {answer.inner_text()!r}")
        browser.close()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="no cached vLLM environment nor starter model")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    with tempfile.TemporaryDirectory(prefix="first-run-") as scratch:
        clone = Path(scratch) / "chat"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit.stdout.strip()], cwd=clone, check=True)
        env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "DJANGO_SECRET_KEY")}
        env["VLLM_PORT"] = str(free_port())
        if args.cold:
            env["VLLM_VENV"] = str(Path(scratch) / "cache" / "vllm-venv")  # the starter model goes beside it
        port = free_port()
        print(f"make run in a fresh clone of {commit.stdout.strip()[:12]} ({'cold' if args.cold else 'cached'}):")
        run = MakeRun(clone, env, port)
        try:
            address = run.wait_for_address()
            marks = {"make run printed the address": run.elapsed(), **first_token(address, run)}
        finally:
            run.stop()
    cached = "without vLLM's environment or the starter model cached" if args.cold else "with both cached"
    print(f"From `make run` on a fresh clone, {cached}:")
    for step, seconds in marks.items():
        print(f"  {step}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
