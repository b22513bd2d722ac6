"""engine.server.site_workers: `run_with_site`, vLLM kept up with the site's daphne workers beside it (`up`).

Several workers share one listening socket (daphne's --fd). vLLM is restarted after a crash while
the site stays up; a site worker that exits ends both; a signal stops the site first, then vLLM.
"""

import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from django.conf import settings

from engine.server.config import Output, ServerConfig, ServerError
from engine.server.processes import StopSignals, already_serving, start_group, stop_group
from engine.server.supervisor import Supervisor, prepare

SITE_START_TIMEOUT = 60.0
SITE_STOP_GRACE = 10.0


@dataclass(frozen=True)
class Site:
    host: str
    port: int
    env: dict[str, str]
    greeting: str = ""  # said after the address
    workers: int = 1  # daphne processes, sharing one listening socket when more than one

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def command(self, fd: int | None = None) -> list[str]:
        where = ["-b", self.host, "-p", str(self.port)] if fd is None else ["--fd", str(fd)]
        daphne = [sys.executable, "-m", "daphne", *where]
        if settings.HTTPS:
            # Behind the HTTPS proxy (deploy/nginx/) the browser's address is the one the proxy
            # forwards: sign-in throttling counts failures by it.
            daphne.append("--proxy-headers")
        return [*daphne, "chatsite.asgi:application"]


def start_site(site: Site) -> list[subprocess.Popen[bytes]]:
    """The site's daphne processes: one listening itself, or `site.workers` sharing one socket.

    The socket is made here and inherited by each worker (daphne's --fd): the kernel hands each
    new connection to one of them, and a worker that dies takes no port with it.
    """
    if site.workers == 1:
        return [start_group(site.command(), site.env, cwd=settings.BASE_DIR)]
    try:
        listening = socket.create_server((site.host, site.port), backlog=1024)
    except OSError as exc:
        raise ServerError(f"The site cannot listen on {site.url}: {exc.strerror or exc}") from exc
    with listening:
        fd = listening.fileno()
        return [
            start_group(site.command(fd), site.env, cwd=settings.BASE_DIR, pass_fds=(fd,)) for _ in range(site.workers)
        ]


def run_with_site(
    site: Site, out: Output, *, vllm: ServerConfig | None, device: str, timeout: float, echo: bool = False
) -> None:
    """up: vLLM (unless `vllm` is None: an external one), then the site once vLLM is ready.

    vLLM is restarted after a crash while the site stays up: the chat says the model server is
    unreachable meanwhile. A signal stops the site first, so no new turn starts, then vLLM.
    """
    with StopSignals().installed() as signals:
        supervisor: Supervisor | None = None
        workers: list[subprocess.Popen[bytes]] = []
        try:
            if vllm is not None and already_serving(vllm):
                out(f"A vLLM serving {vllm.served_model_name!r} already answers at {vllm.base_url}: using it.")
            elif vllm is not None:
                prepare(vllm, out, device)
                supervisor = Supervisor(vllm, out, timeout=timeout, restart=True, force=signals.forced, echo=echo)
                supervisor.start()
                supervisor.wait_until_ready(stop=lambda: signals.requested)
            if not signals.requested:
                if site.workers == 1:
                    out(f"Starting the site: {shlex.join(site.command())}")
                else:
                    each = shlex.join(site.command(fd=0)).replace("--fd 0", "--fd <socket>")
                    out(f"Starting the site as {site.workers} worker processes on {site.url}, each: {each}")
                workers = start_site(site)
                _wait_for_site(workers, site, stop=lambda: signals.requested)
                out(f"The chat is at {site.url} (Ctrl-C stops it).{site.greeting}")
            # No workers only when a stop was asked for before they started.
            while workers and not signals.requested:
                for daphne in workers:
                    if (code := daphne.poll()) is not None:
                        raise ServerError(f"The site (daphne) exited with code {code} (pid {daphne.pid}).")
                if supervisor is not None:
                    supervisor.poll()
                    supervisor.wait(0.5)
                else:
                    time.sleep(0.5)
            out(f"Received {signals.received[0]}.")
        finally:
            if any(daphne.poll() is None for daphne in workers):
                out("Stopping the site...")
                for daphne in workers:
                    daphne.send_signal(signal.SIGTERM)  # all at once: each finishes its answers' writes
                for daphne in workers:
                    stop_group(daphne, SITE_STOP_GRACE, signals.forced)
            if supervisor is not None:
                supervisor.stop()


def _wait_for_site(workers: list[subprocess.Popen[bytes]], site: Site, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SITE_START_TIMEOUT
    while not stop():
        for daphne in workers:
            if (code := daphne.poll()) is not None:
                raise ServerError(f"The site (daphne) exited with code {code} while starting.")
        if _answers(site):
            return
        if time.monotonic() > deadline:
            raise ServerError(f"The site did not answer on {site.url} within {SITE_START_TIMEOUT:g} s.")
        with suppress(subprocess.TimeoutExpired):
            workers[0].wait(timeout=0.1)


def _answers(site: Site) -> bool:
    """Whether the site answers HTTP. A connection alone says nothing with several workers: their
    socket, made before they start, accepts connections into its backlog at once."""
    try:
        with socket.create_connection((site.host, site.port), timeout=1) as connection:
            connection.sendall(f"HEAD / HTTP/1.0\r\nHost: {site.host}\r\n\r\n".encode())
            return connection.recv(1) != b""
    except OSError:
        return False
