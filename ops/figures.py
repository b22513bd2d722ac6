"""What the operator's view shows of the stored answers: every figure is an aggregate query.

The database groups the answers by day (and person, or status) and counts and sums them; no figure
walks the answers in Python. Percentiles are the nearest-rank kind, found by the database too: each
answer gets its position within its day (ROW_NUMBER() over the day, ordered by the value) beside the
day's count (COUNT(*) over the day), and only the rows at position ceil(p × count) come back, two
per day and measure. SQLite and PostgreSQL both have these window functions.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from math import ceil

from django.db.models import Count, ExpressionWrapper, F, FloatField, Q, QuerySet, Sum, Value, Window
from django.db.models.functions import Ceil, Coalesce, RowNumber, TruncDate
from django.utils import timezone

from chat.models import Message

# The people drawn apart in the per-person charts; everyone else is drawn together as "others".
PEOPLE_DRAWN = 8
OTHERS = "others"
ENDINGS = (Message.Status.STOPPED, Message.Status.ERROR, Message.Status.INTERRUPTED)
PERCENTILES = (50, 95)


@dataclass(frozen=True, slots=True)
class Person:
    username: str
    answers: int
    tokens: int


@dataclass(slots=True)
class Usage:
    days: list[date]
    answers: dict[date, int] = field(default_factory=dict)
    tokens: dict[date, int] = field(default_factory=dict)
    # Per person drawn (and OTHERS), per day.
    answers_by_person: dict[str, dict[date, int]] = field(default_factory=dict)
    tokens_by_person: dict[str, dict[date, int]] = field(default_factory=dict)
    people: list[Person] = field(default_factory=list)  # everyone, most answers first


@dataclass(slots=True)
class Speed:
    """p50 and p95 per day of a measure; a day without a measured answer has none."""

    by_percentile: dict[int, dict[date, float]]


@dataclass(frozen=True, slots=True)
class ErrorKind:
    text: str
    count: int


@dataclass(slots=True)
class Endings:
    by_status: dict[str, dict[date, int]]  # stopped, error, interrupted: per day
    totals: dict[str, int]
    errors: list[ErrorKind]  # the most frequent error texts


def days_ending_today(count: int) -> list[date]:
    today = timezone.localdate()
    return [today - timedelta(days=back) for back in range(count - 1, -1, -1)]


def answers_since(first_day: date) -> QuerySet[Message]:
    return Message.objects.filter(role=Message.Role.ASSISTANT, created_at__date__gte=first_day).exclude(
        status=Message.Status.STREAMING
    )


def usage(days: list[date]) -> Usage:
    figures = Usage(days=days)
    rows = (
        answers_since(days[0])
        .annotate(day=TruncDate("created_at"), username=F("conversation__owner__username"))
        .values("day", "username")
        .annotate(answers=Count("pk"), tokens=Coalesce(Sum("completion_tokens"), 0))
        .order_by()
    )
    per_person: dict[str, dict[date, tuple[int, int]]] = defaultdict(dict)
    for row in rows:  # one row per person and day, not per answer
        per_person[row["username"]][row["day"]] = (row["answers"], row["tokens"])
    totals = {
        name: Person(name, sum(a for a, _ in by_day.values()), sum(t for _, t in by_day.values()))
        for name, by_day in per_person.items()
    }
    figures.people = sorted(totals.values(), key=lambda person: (-person.answers, person.username))
    drawn = {person.username for person in figures.people[:PEOPLE_DRAWN]}
    for name, by_day in per_person.items():
        series = name if name in drawn else OTHERS
        for day, (answers, tokens) in by_day.items():
            figures.answers[day] = figures.answers.get(day, 0) + answers
            figures.tokens[day] = figures.tokens.get(day, 0) + tokens
            answers_of = figures.answers_by_person.setdefault(series, {})
            answers_of[day] = answers_of.get(day, 0) + answers
            tokens_of = figures.tokens_by_person.setdefault(series, {})
            tokens_of[day] = tokens_of.get(day, 0) + tokens
    return figures


# Seconds from the request to the first token, as the turn timed it.
TIME_TO_FIRST_TOKEN = F("time_to_first_token")
# Generation speed once the first token is out: the tokens over the time spent streaming them.
TOKENS_PER_SECOND = ExpressionWrapper(
    F("completion_tokens") * Value(1.0) / (F("duration") - F("time_to_first_token")), output_field=FloatField()
)


def percentiles_per_day(first_day: date, measure: F | ExpressionWrapper[FloatField]) -> Speed:
    measured = answers_since(first_day).filter(
        time_to_first_token__isnull=False,
        duration__gt=F("time_to_first_token"),
        completion_tokens__gt=0,
    )
    ranked = (
        measured.annotate(day=TruncDate("created_at"), value=measure)
        .annotate(
            position=Window(RowNumber(), partition_by=[F("day")], order_by=[F("value").asc(), F("pk").asc()]),
            count=Window(Count("pk"), partition_by=[F("day")]),
        )
        # Django filters on window functions by wrapping the query: still one query, a few rows back.
        .filter(Q(position=Ceil(F("count") * 0.5)) | Q(position=Ceil(F("count") * 0.95)))
        .values_list("day", "position", "count", "value")
        .order_by()
    )
    speed = Speed(by_percentile={p: {} for p in PERCENTILES})
    for day, position, count, value in ranked:
        for percentile in PERCENTILES:
            if position == ceil(count * percentile / 100):
                speed.by_percentile[percentile][day] = value
    return speed


def endings(days: list[date], error_kinds: int = 10) -> Endings:
    answers = answers_since(days[0]).filter(status__in=ENDINGS)
    by_status: dict[str, dict[date, int]] = {status: {} for status in ENDINGS}
    rows = answers.annotate(day=TruncDate("created_at")).values("day", "status").annotate(n=Count("pk")).order_by()
    for row in rows:
        by_status[row["status"]][row["day"]] = row["n"]
    errors = (
        answers.filter(status=Message.Status.ERROR)
        .values("error")
        .annotate(n=Count("pk"))
        .order_by("-n", "error")[:error_kinds]
    )
    return Endings(
        by_status=by_status,
        totals={status: sum(per_day.values()) for status, per_day in by_status.items()},
        errors=[ErrorKind(row["error"] or "(no reason given)", row["n"]) for row in errors],
    )
