"""Who holds vLLM's port, whether it is ready, and its process group: started, signalled, stopped."""

import asyncio
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from engine import vllm_client
from engine.endpoints import Endpoint
from engine.server.config import ServerConfig, ServerError, redacted

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
    served = asyncio.run(_served_models(_endpoint(config.url, config.api_key)))
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


def _endpoint(url: str, api_key: str) -> Endpoint:
    return Endpoint("runvllm", f"{url}/v1", api_key)


async def _get_json(endpoint: Endpoint, path: str, *, beside_v1: bool = False) -> tuple[int, Any]:
    # The site's own client (engine/http_client.py), so that runvllm finds vLLM ready exactly when
    # the site can use it: the same proxy, TLS and key. On an event loop of each call's own
    # (asyncio.run): runvllm and up are not async.
    return await vllm_client.get_json(endpoint, path, beside_v1=beside_v1)


async def _served_models(endpoint: Endpoint) -> list[str] | None:
    try:
        status, models = await _get_json(endpoint, "/models")
        return [str(model["id"]) for model in models["data"]] if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError):
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
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        command = " ".join(redacted(arguments)).strip()  # a vLLM's --api-key is no one's to read here
    except OSError:
        command = ""
    return f"pid {pid}: {command or 'unknown command'}"


# --- Readiness -----------------------------------------------------------------------------------


def not_ready_because(url: str, served_model_name: str, *, api_key: str = "") -> str | None:
    """Why the server is not ready yet, or None when it is.

    Ready means /health answers 200 and /v1/models lists the served name: the port alone opens
    before the model has loaded on some versions, and a dead engine still answers /health 500.
    `api_key` is the key vLLM was started with (VLLM_API_KEY or --api-key), which /v1/models then wants.
    (`engine.vllm_client.check_health` is the site's async twin of this, against VLLM_BASE_URL.)
    """
    return asyncio.run(_not_ready_because(_endpoint(url, api_key), served_model_name))


async def _not_ready_because(endpoint: Endpoint, served_model_name: str) -> str | None:
    try:
        status, _ = await _get_json(endpoint, "/health", beside_v1=True)
        if status != 200:
            return f"/health answers {status}"
        status, models = await _get_json(endpoint, "/models")
    except aiohttp.ClientConnectorError:
        return "nothing answers on its port yet"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"no proper answer yet: {type(exc).__name__}"
    if status in (401, 403):
        why = "the key in VLLM_API_KEY is not its key" if endpoint.api_key else "it wants an API key (VLLM_API_KEY)"
        return f"/v1/models answers {status}: {why}"
    try:
        served = [str(model["id"]) for model in models["data"]] if status == 200 else None
    except (KeyError, TypeError):
        served = None
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


def start_group(
    command: list[str],
    env: dict[str, str] | None = None,
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a process as the leader of its own session and process group.

    Its own session keeps a Ctrl-C in the terminal from reaching it directly: we stop it, in order.
    If we are killed outright (SIGKILL, the OOM killer), the kernel sends it SIGTERM, so that it
    is not left running with no one to stop it.
    """
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=term_on_parent_death,
        pass_fds=pass_fds,
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
