"""The ASGI servers the benchmark (and tests/chat/test_live_site_servers.py) can serve the site with.

Each serves the same application object, unchanged: `chatsite.asgi:application` (Channels'
ProtocolTypeRouter and its HTTP consumers) or the benchmark's `bench.asgi:application` around it.

- **daphne**: what `manage.py up` runs (Twisted, its asyncio reactor). Several workers share one
  listening socket made by the caller (`--fd`), each also on a port of its own.
- **daphne-uvloop**: the same daphne with uvloop under Twisted's asyncio reactor (issue 22 asks
  for it): `python -m bench.servers` sets uvloop's policy before daphne makes its loop.
- **uvicorn**: uvloop and httptools; several workers share one socket (`--fd`), as daphne's do
  (not its own `--workers`: see `forks_its_workers`).
- **granian**: Rust's HTTP (hyper) and a Python loop per worker, forked by its own `--workers`.

The site has no lifespan handler (ProtocolTypeRouter refuses the scope; its worker jobs start
with the first request), so uvicorn runs with `--lifespan off` and granian with `asginl` (ASGI,
no lifespan). Every server writes an access log, as daphne does by default, so that none is
spared work the others do.
"""

import asyncio
import sys

SERVERS = ("daphne", "daphne-uvloop", "uvicorn", "granian")


def command(
    server: str, app: str, *, host: str = "127.0.0.1", port: int = 0, fd: int | None = None, workers: int = 1
) -> list[str]:
    """The command that serves `app` on host:port, or on the inherited listening socket `fd` (and,
    daphne's, on `port` too); `workers` processes for granian, which forks its own."""
    python = sys.executable
    if workers != 1 and not forks_its_workers(server):
        raise ValueError(f"{server}'s workers are one process each, sharing a socket (fd)")
    if server in ("daphne", "daphne-uvloop"):
        runner = [python, "-m", "daphne"] if server == "daphne" else [python, "-m", "bench.servers"]
        where = (
            ["-b", host, "-p", str(port)]
            if fd is None
            else ["--fd", str(fd), "-e", f"tcp:port={port}:interface={host}"]
        )
        return [*runner, *where, app]
    if server == "uvicorn":
        where = ["--host", host, "--port", str(port)] if fd is None else ["--fd", str(fd)]
        options = ["--loop", "uvloop", "--http", "httptools", "--lifespan", "off"]
        # Its default waits for every open stream to end; daphne's stop gives them 10 s.
        options += ["--timeout-graceful-shutdown", "10"]
        return [python, "-m", "uvicorn", *where, *options, app]
    if server == "granian":
        if fd is not None:
            raise ValueError("granian forks its own workers on its own socket: no fd")
        options = ["--interface", "asginl", "--http", "1", "--loop", "uvloop", "--workers", str(workers)]
        options += ["--access-log", "--workers-kill-timeout", "10"]
        return [python, "-m", "granian", "--host", host, "--port", str(port), *options, app]
    raise ValueError(f"{server!r} is not one of {', '.join(SERVERS)}")


def forks_its_workers(server: str) -> bool:
    """granian's --workers. uvicorn's --workers imports the application inside each worker's running
    loop, where chatsite/asgi.py's start-up query (recover_interrupted_turns, synchronous ORM) is
    refused (SynchronousOnlyOperation) and every worker dies: its workers are one process each on
    a shared socket, as daphne's, and each imports the site before its loop starts."""
    return server == "granian"


def listens_on_its_own_port_too(server: str) -> bool:
    """Whether a worker on a shared socket can also listen on a port of its own (daphne's -e)."""
    return server in ("daphne", "daphne-uvloop")


def daphne_on_uvloop() -> None:
    """daphne's command line, with uvloop's policy set first: daphne.server installs Twisted's
    asyncio reactor on `asyncio.new_event_loop()` when it is imported, which is then uvloop's."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    daphne_on_uvloop()
