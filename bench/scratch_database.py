"""The database of a benchmark that fills one and times the site's code in its own process
(bench/search.py, bench/sidebar.py): a scratch SQLite file, a PostgreSQL server started for the run
(`--postgresql`, tests/servers.py's), or an empty database the caller names; Django set up on it.
"""

import argparse
import os
import tempfile
from collections.abc import Callable


def add_postgresql_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgresql", action="store_true", help="start a scratch PostgreSQL server (as the tests do) and fill it"
    )


def run_on_database(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, str | None], None],
    database_url: str | None = None,
) -> None:
    """`run(args, url)`: on a PostgreSQL server started for it with `--postgresql` (stopped after),
    else on `database_url` (None: `set_up_django` makes a scratch SQLite file)."""
    if not args.postgresql:
        run(args, database_url)
        return
    from tests.servers import PostgreSQL, postgresql_bin

    if (programs := postgresql_bin()) is None:
        parser.error("--postgresql needs Debian's postgresql package (apt-get install postgresql)")
    server = PostgreSQL(programs).start()
    try:
        run(args, server.create_database("bench"))
    finally:
        server.stop()


def set_up_django(database_url: str | None) -> tempfile.TemporaryDirectory[str]:
    """Django set up on `database_url`, migrated; without one, on a SQLite file in the scratch folder
    returned (which holds it until it is cleaned up or collected)."""
    scratch = tempfile.TemporaryDirectory()
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{scratch.name}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return scratch
