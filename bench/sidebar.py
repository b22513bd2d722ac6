"""How fast the sidebar is drawn for someone with 10,000 conversations. Prints p50/p99 latencies.

Fills a scratch database with one person's 10,000 conversations (some pinned, some in 30 folders,
some archived) and a second person's 10,000, then times what each page of the chat draws
(chat/sidebar.py, chat/folders.py): the pinned list and the folders, the list's first page, a page
deep in the list, and a folder's first page, each read and rendered as the page renders it. It also
prints the query plan of the list's page, which should use its partial index, not sort 10,000
rows. The target is well under 50 ms p50 for each.

    .venv/bin/python bench/sidebar.py [--conversations 10000] [--runs 30]
    .venv/bin/python bench/sidebar.py --postgresql    # on a PostgreSQL server started for the run
"""

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    scratch_database.add_postgresql_option(parser)
    scratch_database.run_on_database(parser, parser.parse_args(), run)


def run(args: argparse.Namespace, database_url: str | None) -> None:
    _scratch = scratch_database.set_up_django(database_url)
    from django.contrib.auth.models import User
    from django.db import connection
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    from chat import folders, sidebar
    from chat.models import Conversation, Folder

    rng = random.Random(23)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    people = [User.objects.create_user(name) for name in ("bench", "someone-else")]
    filled = time.perf_counter()
    for person in people:
        shelves = [Folder.objects.create(owner=person, name=f"Folder {n}") for n in range(30)]
        rows = []
        for n in range(args.conversations):
            kind = rng.random()
            rows.append(
                Conversation(
                    owner=person,
                    title=f"Conversation {n}",
                    pinned=kind < 0.002,
                    folder=rng.choice(shelves) if 0.002 <= kind < 0.12 else None,
                    archived_at=start if kind > 0.8 else None,
                )
            )
        Conversation.objects.bulk_create(rows, batch_size=1000)
        for row in rows:  # auto_now wrote one moment over them all: spread them over a year
            row.updated_at = start + timedelta(seconds=rng.randrange(365 * 86400))
        Conversation.objects.bulk_update(rows, ["updated_at"], batch_size=1000)
    seconds = time.perf_counter() - filled
    print(f"Filled {connection.vendor} with two people's {args.conversations:,} conversations in {seconds:.0f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    person = people[0]
    request = RequestFactory().get("/")
    request.user = person
    unfiled = Conversation.objects.owned_by(person).unfiled().newest_first()
    deep = sidebar.place_after(unfiled[unfiled.count() // 2])  # halfway down the list
    folder = Folder.objects.filter(owner=person).first()
    assert folder is not None

    def drawn(listing: "sidebar.Listing") -> str:
        context = {"conversations": listing.conversations, "sidebar_next": listing.next_place}
        return render_to_string("chat/page.html#sidebar-page", context, request)

    timed: dict[str, Callable[[], object]] = {
        "list, read only": lambda: sidebar.first_page(person),
        "pinned+folders, read": lambda: folders.shelves_context(person),
        "pinned and folders": lambda: render_to_string(
            "chat/shelves.html#shelves", folders.shelves_context(person), request
        ),
        "list, first page": lambda: drawn(sidebar.first_page(person)),
        "list, page 100": lambda: drawn(sidebar.page_after(person, deep)),
        "a folder, first page": lambda: drawn(sidebar.first_page(person, folder=folder)),
    }
    for name, draw in timed.items():
        draw()  # templates compiled, caches warm
        times = []
        for _ in range(args.runs):
            began = time.perf_counter()
            draw()
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, round(len(times) * 0.99))]
        print(f"  {name:<22} p50 {statistics.median(times):6.1f} ms   p99 {p99:6.1f} ms")
    print("The list's page, as the database plans it:")
    query, params = sidebar.first_page.__globals__["_listed"](person, None)[:51].query.sql_with_params()
    with connection.cursor() as cursor:
        explain = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
        cursor.execute(explain + query, params)
        for row in cursor.fetchall():
            print("   ", row[-1])


if __name__ == "__main__":
    main()
