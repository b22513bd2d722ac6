"""chatsite/outages.py: which failures are the database's absence (a 503), and which a defect (a 500).

The 503 itself, on every door, is tested against a stopped PostgreSQL in tests/test_faults.py.
"""

import sqlite3

import psycopg
import psycopg_pool
import pytest
from django.db import InterfaceError, OperationalError, ProgrammingError

from chatsite import outages


def raised_as_django_does(error: Exception, wrapped: type[Exception]) -> bool:
    """database_is_away() while `error`, wrapped as Django's database wrapper wraps it, is handled."""
    try:
        try:
            raise error
        except Exception as cause:
            raise wrapped(str(cause)) from cause
    except Exception:
        return outages.database_is_away()


@pytest.mark.parametrize(
    ("error", "wrapped", "away"),
    [
        (sqlite3.OperationalError("database is locked"), OperationalError, True),
        (sqlite3.OperationalError("unable to open database file"), OperationalError, True),
        (sqlite3.OperationalError("too many SQL variables"), OperationalError, False),
        (sqlite3.OperationalError("no such table: chat_message"), OperationalError, False),
        (psycopg.OperationalError("connection failed: Connection refused"), OperationalError, True),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 20.00 sec"), OperationalError, True),
        (psycopg.InterfaceError("the connection is closed"), InterfaceError, True),
        (psycopg.ProgrammingError("syntax error"), ProgrammingError, False),
        (ValueError("a defect"), ValueError, False),
    ],
)
def test_only_a_database_away_or_locked_is_an_outage(error, wrapped, away):
    assert raised_as_django_does(error, wrapped) is away
