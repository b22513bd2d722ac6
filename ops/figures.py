"""What the operator's view shows of the stored answers: every figure is an aggregate query.

The database groups the answers by day (and person, or status) and counts and sums them; no figure
walks the answers in Python. An answer's day is found by comparing its time with the days'
boundaries in the site's time zone (see `day_of_answer`), not with TruncDate: on SQLite, TruncDate
with time zones calls back into Python for every row, which made a month of 100,000 answers take
seconds per figure. Percentiles are the nearest-rank kind, found by the database too: each
answer gets its position within its day (ROW_NUMBER() over the day, ordered by the value) beside the
day's count (COUNT(*) over the day), and only the rows at position ceil(count * p / 100) come back,
two per day and measure: (count * p + 99) / 100 in whole numbers, as SQLite has no CEIL of its own.
SQLite and PostgreSQL both have these window functions.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.db import connection
from django.db.models import (
    Case,
    Count,
    DateField,
    ExpressionWrapper,
    F,
    FloatField,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import Combinable
from django.db.models.functions import Coalesce
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


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def answers_since(first_day: date) -> QuerySet[Message]:
    return Message.objects.filter(role=Message.Role.ASSISTANT, created_at__gte=_start_of(first_day)).exclude(
        status=Message.Status.STREAMING
    )


def day_of_answer(days: list[date]) -> Case:
    """The day (of `days`, in the site's time zone) an answer was made, as plain comparisons with the
    days' starts that every database runs natively; an answer after the last day counts in it."""
    return Case(
        *(When(created_at__lt=_start_of(day + timedelta(days=1)), then=Value(day)) for day in days[:-1]),
        default=Value(days[-1]),
        output_field=DateField(),
    )


def usage(days: list[date]) -> Usage:
    figures = Usage(days=days)
    rows = (
        answers_since(days[0])
        .annotate(day=day_of_answer(days), username=F("conversation__owner__username"))
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


def percentiles_per_day(days: list[date], measure: Combinable) -> Speed:
    measured = (
        answers_since(days[0])
        .filter(time_to_first_token__isnull=False, duration__gt=F("time_to_first_token"), completion_tokens__gt=0)
        .annotate(day=day_of_answer(days), value=measure)
        .values("day", "value")
        .order_by()
    )
    inner, params = measured.query.sql_with_params()
    # The ranking is written out: the ORM would compute each answer's day again in each window it
    # writes (three sorts instead of one). Here the inner query computes it once.
    ranked = f"""
        SELECT day, position, n, value FROM (
            SELECT day, value, ROW_NUMBER() OVER ranking AS position, COUNT(*) OVER (PARTITION BY day) AS n
            FROM ({inner}) measured
            WINDOW ranking AS (PARTITION BY day ORDER BY value)
        ) ranked
        WHERE {" OR ".join(f"position = (n * {p} + 99) / 100" for p in PERCENTILES)}
    """
    speed = Speed(by_percentile={p: {} for p in PERCENTILES})
    with connection.cursor() as cursor:
        cursor.execute(ranked, params)
        for day, position, count, value in cursor.fetchall():
            for percentile in PERCENTILES:
                if position == (count * percentile + 99) // 100:  # as the query has it
                    speed.by_percentile[percentile][_as_date(day)] = value
    return speed


def _as_date(day: date | str) -> date:
    return day if isinstance(day, date) else date.fromisoformat(day)  # SQLite returns the day as text


def endings(days: list[date], error_kinds: int = 10) -> Endings:
    answers = answers_since(days[0]).filter(status__in=ENDINGS)
    by_status: dict[str, dict[date, int]] = {status: {} for status in ENDINGS}
    rows = answers.annotate(day=day_of_answer(days)).values("day", "status").annotate(n=Count("pk")).order_by()
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


def first_token_median_by_model(since: datetime) -> dict[str, float]:
    """The median time to first token of each model's answers since `since` (nearest rank)."""
    answers = Message.objects.filter(
        role=Message.Role.ASSISTANT, created_at__gte=since, time_to_first_token__isnull=False
    ).order_by()
    medians: dict[str, float] = {}
    for model, count in answers.values_list("model_name").annotate(count=Count("pk")):
        by_time = answers.filter(model_name=model).order_by("time_to_first_token")
        medians[model] = by_time.values_list("time_to_first_token", flat=True)[(count * 50 + 99) // 100 - 1]
    return medians
