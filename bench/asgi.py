"""The site as daphne serves it, plus a count of its database queries for the benchmark.

Every database connection the site opens gets an execute wrapper (Django's hook for watching
queries) that counts statements and, of those, writes; `GET /__bench__/queries` answers the
counts so far as JSON. Nothing else differs from chatsite.asgi, and the counting costs a lock and
two additions per query, not per token. Only bench/run.py serves this module.
"""

import json
import threading
from collections.abc import Callable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from chatsite.asgi import application as site

_lock = threading.Lock()
counts = {"queries": 0, "writes": 0}
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    with _lock:
        counts["queries"] += 1
        if sql.lstrip().upper().startswith(WRITES):
            counts["writes"] += 1
    return execute(sql, params, many, context)


def _watch(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_watch)


async def application(scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "http" and scope["path"] == "/__bench__/queries":
        with _lock:
            body = json.dumps(counts).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await site(scope, receive, send)
