"""The site as daphne serves it, plus a count of its database queries for the benchmark.

Every database connection the site opens gets an execute wrapper (Django's hook for watching
queries) that counts statements and, of those, writes; `GET /__bench__/queries` answers the
counts so far as JSON, with the folder the site's code was imported from. Nothing else differs
from chatsite.asgi, and the counting costs a lock, two additions
and a 16-byte copy per query, not per token. Only bench/run.py and bench/vllm_bench.py serve it.

Several workers share one listening socket, so the request for the counts reaches any one of them:
each worker keeps its counts in a small file of its own in the folder BENCH_QUERY_COUNTS names
(mapped into memory: a count is a memory write, not a system call), and whichever answers sums the
folder. BENCH_SITE, when set, is another checkout of the repository whose site is served (its
chatsite, chat, engine ...) while this module stays this tree's: bench/run.py's --site.
"""

import json
import mmap
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

if site_root := os.environ.get("BENCH_SITE"):
    # Before anything of the site is imported: the first folder on the path that has it wins.
    sys.path.insert(0, site_root)

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

import chat
from chatsite.asgi import application as site

SITE = str(Path(chat.__file__).resolve().parent.parent)
print(f"bench.asgi: serving the site in {SITE} (chat from {chat.__file__})", file=sys.stderr, flush=True)

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
COUNTS = struct.Struct("qq")  # queries, writes
# Without the folder (one worker started by hand), each process answers its own counts.
folder = Path(os.environ.get("BENCH_QUERY_COUNTS") or tempfile.mkdtemp(prefix="bench-queries-"))
mine = folder / f"{os.getpid()}.counts"
mine.write_bytes(bytes(COUNTS.size))
with mine.open("r+b") as file:
    shared = mmap.mmap(file.fileno(), COUNTS.size)
_lock = threading.Lock()
counts = {"queries": 0, "writes": 0}


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    with _lock:
        counts["queries"] += 1
        if sql.lstrip().upper().startswith(WRITES):
            counts["writes"] += 1
        COUNTS.pack_into(shared, 0, counts["queries"], counts["writes"])
    return execute(sql, params, many, context)


def _watch(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_watch)


def every_workers_counts() -> dict[str, Any]:
    every = [COUNTS.unpack(path.read_bytes()[: COUNTS.size]) for path in folder.glob("*.counts")]
    queries, writes = sum(each[0] for each in every), sum(each[1] for each in every)
    return {"queries": queries, "writes": writes, "workers": len(every), "site": SITE}


async def application(scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "http" and scope["path"] == "/__bench__/queries":
        body = json.dumps(every_workers_counts()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await site(scope, receive, send)
