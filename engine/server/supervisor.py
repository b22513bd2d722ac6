"""engine.server.supervisor: `run`, vLLM started, watched until ready, and restarted with backoff if asked (runvllm).

The site's workers beside it (`up`) are engine/server/site_workers.py's.
"""

import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TextIO

from django.conf import settings

from engine.server import starter_build
from engine.server.config import LAST_LINES, Output, ServerConfig, ServerError
from engine.server.install import ensure_installed
from engine.server.processes import StopSignals, already_serving, not_ready_because, start_group, stop_group

# How often the wait for readiness says how long it has been waiting.
PROGRESS_EVERY = 5.0
# The longest pause between two restarts; a server that stayed up this long starts over at the
# shortest pause when it next crashes.
MAX_BACKOFF = 60.0
# How many of vLLM's last output lines are searched for why it failed: a Python traceback through
# vLLM's engine processes runs to a hundred lines and more.
SEARCHED_LINES = 400

# --- One running vLLM ----------------------------------------------------------------------------


class ServerProcess:
    """One vLLM process group, its output copied to the log file (and to the terminal if `echo`).

    The terminal gets what a person needs instead: progress while vLLM starts, and a readable
    reason when it fails. vLLM's own output, with its tracebacks, is for the log file.
    """

    def __init__(self, config: ServerConfig, out: Output, echo: bool = False) -> None:
        self.config = config
        self.out = out
        self.echo = echo
        self.lines: deque[str] = deque(maxlen=SEARCHED_LINES)
        self.process: subprocess.Popen[bytes] | None = None
        self._tee: threading.Thread | None = None

    def start(self) -> None:
        self.lines.clear()
        log = None
        if self.config.log_file is not None:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = self.config.log_file.open("a", encoding="utf-8")
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} runvllm: {self.config.shown_command()}\n")
            log.flush()
        try:
            self.process = start_group(
                self.config.command(), self.config.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            if log:
                log.close()
            raise ServerError(f"Could not start vLLM with {self.config.python}: {exc.strerror or exc}") from exc
        if self.config.cpus:
            # Set while the interpreter is still starting: its engine and worker processes, started
            # seconds later, inherit it. On a small CPU-only machine vLLM's busy-waiting processes
            # otherwise take every core while it generates, and the site (whose job is to stream
            # the answer as it comes) gets no CPU until the answer is complete.
            try:
                os.sched_setaffinity(self.process.pid, self.config.cpus)
            except OSError as exc:
                stop_group(self.process, 0)
                if log:
                    log.close()
                cpus = ",".join(map(str, sorted(self.config.cpus)))
                raise ServerError(f"Cannot run vLLM on CPUs {cpus} (VLLM_CPUS): {exc.strerror or exc}") from exc
        self._tee = threading.Thread(target=self._copy_output, args=(self.process, log), daemon=True)
        self._tee.start()

    def _copy_output(self, process: subprocess.Popen[bytes], log: TextIO | None) -> None:
        assert process.stdout is not None
        # Whatever happens to the terminal or the log, keep reading: vLLM blocks once its pipe fills.
        try:
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if self.echo:
                    self.out(line)
                if log:
                    try:
                        log.write(line + "\n")
                        log.flush()
                    except OSError:
                        pass  # a full disk must not stop vLLM; the terminal still shows its output
        finally:
            if log:
                with suppress(OSError):
                    log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def latest_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")

    def last_lines(self) -> str:
        return "\n".join(list(self.lines)[-LAST_LINES:])

    def failure(self, code: int) -> str:
        """Why vLLM exited, for a person, and where its own account of it is."""
        where = f" vLLM's own output is in {self.config.log_file}." if self.config.log_file else ""
        return f"{why_vllm_failed(list(self.lines), self.config.model, code)}{where}"

    def stop(self, grace: float, force: Callable[[], bool] = lambda: False) -> None:
        if self.process is None:
            return
        stop_group(self.process, grace, force)
        if self._tee:
            # The pipe closes once every process in the group has gone; then the last lines are in.
            self._tee.join(timeout=5)


class Supervisor:
    """Keeps one vLLM running: starts it, notices when it is ready and when it crashes.

    A crash before vLLM was ever ready is a fault in its configuration (a wrong model, too little
    memory), and restarting would only hide it: that always ends the run, with vLLM's last log
    lines. After vLLM has been ready, `restart` brings it back after a pause that doubles at each
    crash, up to MAX_BACKOFF.
    """

    def __init__(
        self,
        config: ServerConfig,
        out: Output,
        *,
        timeout: float,
        restart: bool = False,
        force: Callable[[], bool] = lambda: False,
        echo: bool = False,
    ) -> None:
        self.config = config
        self.force = force
        self.out = out
        self.timeout = timeout
        self.restart = restart
        self.server = ServerProcess(config, out, echo)
        self.ready = False
        self.ever_ready = False
        self.backoff = settings.VLLM_RESTART_BACKOFF
        self._started_at = 0.0
        self._ready_at = 0.0
        self._next_progress = 0.0
        self._restart_at: float | None = None

    def start(self) -> None:
        self.out(f"Starting vLLM: {self.config.shown_command()}")
        if self.config.log_file:
            self.out(f"vLLM's log: {self.config.log_file}")
        self.server.start()
        self.ready = False
        self._started_at = time.monotonic()
        self._next_progress = self._started_at + PROGRESS_EVERY

    def poll(self) -> None:
        """Move on by what has happened since the last call; raises ServerError when it gives up."""
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart_at = None
                self.start()
            return
        code = self.server.exit_code()
        if code is not None:
            self._exited(code, now)
        elif not self.ready:
            self._check_ready(now)

    def _check_ready(self, now: float) -> None:
        reason = not_ready_because(self.config.url, self.config.served_model_name, api_key=self.config.api_key)
        if reason is None:
            self.ready = self.ever_ready = True
            self._ready_at = now
            self.out(
                f"vLLM is ready after {now - self._started_at:.0f} s: {self.config.base_url} serves "
                f"{self.config.served_model_name} (pid {self.server.pid})."
            )
        elif now - self._started_at > self.timeout:
            self.server.stop(settings.VLLM_STOP_GRACE, self.force)
            raise ServerError(
                f"vLLM was not ready after {self.timeout:g} s ({reason}); stopped it. "
                f"Its last log lines:\n{self.server.last_lines()}"
            )
        elif now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY
            latest = self.server.latest_line()[:160]
            said = f" ({latest})" if latest else ""
            self.out(f"Waiting for vLLM to be ready: {now - self._started_at:.0f} s{said}")

    def _exited(self, code: int, now: float) -> None:
        # Its engine may outlive the API server: clear the whole group before anything else.
        self.server.stop(settings.VLLM_STOP_GRACE, self.force)
        was_ready = self.ready
        self.ready = False
        what = "while starting" if not was_ready else "after it was ready"
        if not self.ever_ready or not self.restart:
            raise ServerError(f"vLLM exited with code {code} {what}: {self.server.failure(code)}")
        if was_ready and now - self._ready_at >= MAX_BACKOFF:
            self.backoff = settings.VLLM_RESTART_BACKOFF
        self.out(
            f"vLLM exited with code {code} {what}: {self.server.failure(code)} Restarting it in {self.backoff:g} s."
        )
        self._restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when vLLM exits."""
        process = self.server.process
        if process is not None and process.returncode is None and self._restart_at is None:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=seconds)
        else:
            time.sleep(seconds)

    def wait_until_ready(self, stop: Callable[[], bool]) -> bool:
        """Poll until vLLM is ready (True) or `stop` says give up (False)."""
        while not self.ready and not stop():
            self.poll()
            if not self.ready:
                self.wait(0.5)
        return self.ready

    def stop(self) -> None:
        if self.server.process is None or self.server.process.returncode is not None:
            return
        self.out(f"Stopping vLLM (pid {self.server.pid}) and its engine processes...")
        self.server.stop(settings.VLLM_STOP_GRACE, self.force)
        self.out("vLLM has stopped.")


_VLLM_PREFIX = re.compile(r"^\(\w[\w-]* pid=\d+\)\s*(?:[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]+\]\s*)?")
_EXCEPTION = re.compile(r"^([\w.]+\.)?\w*(Error|Exception|Exit)\b")


def why_vllm_failed(lines: list[str], model: str, code: int) -> str:
    """A sentence on why vLLM stopped, from its last output lines: the common failures in plain
    words, anything else as the exception it ended with."""
    text = "\n".join(lines)
    if code < 0 and not text.strip():
        return f"It was killed by signal {-code}."
    if re.search(r"couldn't connect to|LocalEntryNotFoundError|OfflineModeIsEnabled|outgoing traffic has been", text):
        return (
            f"It could not fetch {model}: the model hub cannot be reached, and the model is not in the "
            "Hugging Face cache. Give a folder that holds the model (--model /path/to/folder, or VLLM_MODEL)."
        )
    if re.search(r"GatedRepoError|401 Client Error|gated repo", text):
        return f"The model hub lets only signed-in people have {model}: set HF_TOKEN to a token that may."
    if re.search(r"RepositoryNotFoundError|is not a valid model identifier|Repository Not Found", text):
        return f"There is no model {model} on the model hub (a private one needs HF_TOKEN), nor a folder of that name."
    if re.search(r"OutOfMemoryError|out of memory|Cannot allocate memory|[Ii]nsufficient memory", text):
        return f"It ran out of memory loading {model}: it needs a machine with more memory, or a smaller model."
    if code == -9:
        return "It was killed (signal 9): the kernel does that when memory runs out, which is likely what happened."
    # The exceptions its tracebacks end with, without the "(EngineCore pid=...) ERROR <time> [file]"
    # vLLM puts before a line. The engine's and the API server's own only say "see the root cause
    # above": the root cause is the last exception before them.
    raised = [bare for line in lines if _EXCEPTION.match(bare := _VLLM_PREFIX.sub("", line.strip()))]
    causes = [line for line in raised if not re.search(r"[Ss]ee (the )?(root cause|stack trace)", line)]
    if cause := next(reversed(causes or raised), None):
        if "memory utilization" in cause:
            return f"There is not enough free memory for it: {cause}"
        return f"{cause.rstrip('.')}."
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"Its last words: {last.rstrip('.')}." if last else "It said nothing."


def prepare(config: ServerConfig, out: Output, device: str) -> None:
    """Everything vLLM needs before it can start: itself, and the starter model if it is to serve it."""
    ensure_installed(config, out, device)
    if config.is_starter:
        starter_build.ensure_built(config, out)


def run(config: ServerConfig, out: Output, *, device: str, timeout: float, restart: bool, echo: bool = False) -> None:
    """runvllm: start vLLM (installing it first if needed), wait until it is ready, and keep it
    until a signal says stop."""
    if already_serving(config):
        out(
            f"A vLLM serving {config.served_model_name!r} already answers at {config.base_url}: "
            "not starting a second one."
        )
        return
    prepare(config, out, device)
    with StopSignals().installed() as signals:
        supervisor = Supervisor(config, out, timeout=timeout, restart=restart, force=signals.forced, echo=echo)
        try:
            supervisor.start()
            while not signals.requested:
                supervisor.poll()
                supervisor.wait(0.5)
            out(f"Received {signals.received[0]}.")
        finally:
            supervisor.stop()
