"""`server_error`: the site's handler500; a database that is away or saturated answers 503, not 500.

Any request can meet it, on any door: a token lookup while PostgreSQL's pool has no connection to
lend within its timeout (psycopg_pool's `PoolTimeout`) or the server is restarting, a session read
while SQLite is held locked longer than the site's lock wait. Neither is the client's fault nor a
defect of the site, and both pass: the client is told so, and when to try again, in the shape of
the door it used (JSON on /api/ and /v1/, whose SDKs retry a 503 after `Retry-After`).

Django calls handler500 inside the `except` block of the exception it answers (for an async
request too: asgiref re-raises it in the thread that runs `response_for_exception`), which is how
this handler can tell a database outage from a defect. A defect stays a 500.
"""

import sqlite3
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from django.views import defaults

from api.errors import ApiError, door_at

# Long enough for a pool to free a connection or a server to come back, short enough to retry soon.
RETRY_AFTER_SECONDS = 5


# SQLite's OperationalError is also its word for a query it cannot run ("too many SQL variables",
# "no such table"): a defect, which stays a 500. These are its lock and its file.
SQLITE_AWAY = ("database is locked", "database table is locked", "unable to open database")


def database_is_away() -> bool:
    """Whether the exception being answered is the database's absence, not the site's defect."""
    exc = sys.exc_info()[1]
    # InterfaceError: a connection the database closed under a request (a restart).
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if isinstance(exc.__cause__, sqlite3.OperationalError):
        return str(exc.__cause__).startswith(SQLITE_AWAY)
    # PostgreSQL's (psycopg's): a connection refused, lost or timed out, a pool with none to lend.
    return True


def server_error(request: HttpRequest) -> HttpResponse:
    if not database_is_away():
        return defaults.server_error(request)
    message = _("The site's database is not answering right now (busy or restarting). Try again in a few seconds.")
    door = door_at(request.path)
    if door is not None:
        return door.response(
            ApiError(503, message, type="server_error", code="database_unavailable", retry_after=RETRY_AFTER_SECONDS)
        )
    response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
