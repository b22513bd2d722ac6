"""The site, served by daphne in its own process over a real socket, as people run it."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from django.conf import settings

from bench import servers
from engine.server.site_workers import Site
from tests.commands import ROOT
from tests.ports import free_port
from tests.waiting import wait_for

# How long a site process may take to answer its first request: a bound, not a wait (the tests poll
# until it answers), as wide as a machine busy with other work needs. Unloaded, it takes 2-4 s.
STARTS_WITHIN = 90.0


def site_env(fake_vllm_server, **overrides: str) -> dict[str, str]:
    """The environment of a site that shares the tests' database and settings and uses the fake vLLM."""
    return {
        # The tests' settings (pytest-django puts them in the environment), not the product's: the
        # site must check passwords with the hasher that made the tests' users, as Django tries
        # only those in PASSWORD_HASHERS.
        "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
        "VLLM_BASE_URL": fake_vllm_server.base_url,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        **overrides,
    }


def daphne_answers(process: subprocess.Popen[bytes], url: str) -> bool:
    """Whether the site's daphne (or other server) at `url` answers a request yet (any answer); an
    error if it exited."""
    if process.poll() is not None:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    try:
        httpx.get(f"{url}/accounts/login/", timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def stop_daphne(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, as an operator stops it, then kill if it has not exited within 10 s."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SiteProcess:
    """One site process; daphne, as `up` runs it, unless `server` names another of bench/servers.py's."""

    def __init__(self, env: dict[str, str], daphne_args: tuple[str, ...] = (), server: str = "daphne") -> None:
        self.env = env
        self.daphne_args = daphne_args
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, within: float = STARTS_WITHIN) -> "SiteProcess":
        if self.server == "daphne":
            command = [
                *(sys.executable, "-m", "daphne", *self.daphne_args),
                *("-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"),
            ]
        else:
            command = servers.command(self.server, "chatsite.asgi:application", port=self.port)
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **self.env})
        wait_for(self._answers, within, f"{self.server} to answer")
        return self

    def _answers(self) -> bool:
        assert self.process
        return daphne_answers(self.process, self.url)

    def stop(self) -> None:
        stop_daphne(self.process)

    def kill(self) -> None:
        """Die the way a crashed process does: no chance to write anything."""
        assert self.process
        self.process.kill()
        self.process.wait()


def csrf_headers(client: httpx.Client) -> dict[str, str]:
    return {"X-CSRFToken": client.cookies["csrftoken"]}


class SiteWorkers:
    """The site as several daphne workers sharing one listening socket, as `manage.py up --workers N`
    serves it (engine/server/site_workers.py's `Site`), each also on a port of its own so that a test
    can send a request to the worker it chooses."""

    def __init__(self, env: dict[str, str], workers: int = 3, *, quiet: bool = False) -> None:
        self.env = env
        self.quiet = quiet  # no access log (a benchmark's thousands of requests)
        self.site = Site("127.0.0.1", free_port(), env, workers=workers)
        self.url = f"http://127.0.0.1:{self.site.port}"
        self.listening = socket.create_server((self.site.host, self.site.port), backlog=1024)
        self.workers: list[Worker] = []

    def start(self) -> "SiteWorkers":
        # Started together, then waited for: each spends its first seconds importing Django.
        self.workers += [Worker(self, free_port(), {}) for _ in range(self.site.workers)]
        try:
            for worker in self.workers:
                wait_for(worker.answers, STARTS_WITHIN, "a daphne worker to answer")
        except BaseException:
            self.stop()  # a fixture that fails before its yield never stops what it started
            raise
        return self

    def add_worker(self, output: Path | None = None, **env: str) -> "Worker":
        """Start one more worker, with `env` added to the site's environment, writing its log to
        `output` if given (else to the tests' own output)."""
        worker = Worker(self, free_port(), env, output)
        self.workers.append(worker)
        try:
            wait_for(worker.answers, STARTS_WITHIN, "a daphne worker to answer")
        except BaseException:
            self.stop_worker(worker)  # a site shared between tests keeps the workers it had
            raise
        return worker

    def stop_worker(self, worker: "Worker") -> None:
        """Stop one worker as an operator does (SIGTERM), leaving the others serving."""
        self.workers.remove(worker)
        stop_daphne(worker.process)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self.listening.close()


class Worker:
    def __init__(self, site: SiteWorkers, port: int, env: dict[str, str], output: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.output = output
        fd = site.listening.fileno()
        command = [
            *site.site.command(fd),
            "-e",
            f"tcp:port={port}:interface=127.0.0.1",
            *(["-v", "0"] if site.quiet else []),
        ]
        environment = {**os.environ, **site.env, **env}
        if output is None:
            self.process = subprocess.Popen(command, cwd=ROOT, env=environment, pass_fds=(fd,))
        else:
            with open(output, "ab") as log:  # the worker holds its own copy once started
                self.process = subprocess.Popen(
                    command, cwd=ROOT, env=environment, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT
                )

    @property
    def pid(self) -> int:
        return self.process.pid

    def answers(self) -> bool:
        return daphne_answers(self.process, self.url)

    def kill(self) -> None:
        """kill -9: no chance to write anything."""
        self.process.kill()
        self.process.wait()
