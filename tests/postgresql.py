"""A real PostgreSQL server for the tests: Debian's `postgresql` package, in a temporary directory.

PostgreSQL refuses to run as root: when the tests run as root, the server runs as the `postgres`
user the package creates, in a directory given to it.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port

# Debian installs each major version's programs here, not on the PATH.
INSTALLED = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))


def installed() -> bool:
    return bool(INSTALLED)


@contextmanager
def postgresql_server() -> Iterator[str]:
    """A PostgreSQL server started for the duration; yields its DATABASE_URL (user and database `chatsite`)."""
    bin_dir = INSTALLED[-1].parent
    home = Path(tempfile.mkdtemp(prefix="chatsite-postgresql-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(home, postgres.pw_uid, postgres.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*run_as, *command], check=True, capture_output=True, timeout=120)

    try:
        run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", "chatsite", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"
        )
        # No fsync (-F): a test database need not survive a power cut, and its writes go faster.
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -F"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
        try:
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "chatsite", "chatsite")
            yield f"postgres://chatsite@127.0.0.1:{port}/chatsite"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)
