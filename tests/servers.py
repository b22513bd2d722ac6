"""A real PostgreSQL and a real Redis for the tests, each on a free loopback port in a scratch folder.

Debian's `postgresql` and `redis-server` packages (`make test` installs them). PostgreSQL refuses
to run as root, so as root its files belong to, and it runs as, the `postgres` user.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.ports import free_port, listening
from tests.waiting import wait_for


def postgresql_bin() -> Path | None:
    """The newest installed PostgreSQL's programs, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def redis_bin() -> str | None:
    return shutil.which("redis-server")


class PostgreSQL:
    def __init__(self, bin: Path, log: Path | None = None) -> None:
        self.bin = bin
        self.log = log  # the server's own log; by default it writes to this process's output
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="chat-postgresql-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def start(self) -> "PostgreSQL":
        data = self.folder / "data"
        subprocess.run(
            [*self._as_postgres, self.bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Durability traded for speed: the database lives as long as the test run.
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        self._command = [*self._as_postgres, str(self.bin / "postgres"), "-D", str(data), *options]
        return self._run()

    def _run(self) -> "PostgreSQL":
        command = self._command
        if self.log is None:
            self.process = subprocess.Popen(command)
        else:
            with open(self.log, "ab") as log:  # the server holds its own copy once started
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers(), 30, "PostgreSQL to accept connections")
        return self

    def _answers(self) -> bool:
        assert self.process
        if self.process.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.process.returncode}")
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of `template`, which nothing may be connected to), by its URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def restart(self) -> None:
        """Stop the server as an operator would (ending every session), and start it again on the
        same port with the same data."""
        self._stop_server()
        self._run()

    def halt(self) -> None:
        """Stop the server, keeping its data and port for `resume`."""
        self._stop_server()

    def resume(self) -> None:
        self._run()

    def stop(self) -> None:
        self._stop_server()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _stop_server(self) -> None:
        if self.process and self.process.poll() is None:
            # Through pg_ctl: the process started here may be runuser's, which passes no signal on.
            # "fast": ends the sessions without waiting for them.
            data = str(self.folder / "data")
            stop = [*self._as_postgres, str(self.bin / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"]
            subprocess.run(stop, check=False, stdout=subprocess.DEVNULL, timeout=60)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Redis:
    def __init__(self, program: str) -> None:
        self.program = program
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        command = [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: listening(self.port), 15, "Redis to listen")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
