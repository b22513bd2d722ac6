"""How many answers one person may have generating at once, and start in a minute.

Every door starts a turn through chat/turns.py, which asks here inside the transaction that saves
the prompt, after locking the person's row: the count and the new answer are one step, so two
requests (in one worker or in two) cannot both see room for one more answer. The counts are the
stored answers, which every worker shares. A refused turn saves nothing.
"""

import math
from collections import defaultdict, deque
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Func, IntegerField, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import ngettext

from chat.models import Message

MINUTE = timedelta(minutes=1)
# When to try again after "too many at once": an answer's end cannot be known, and most take
# seconds to tens of seconds.
RETRY_WHILE_GENERATING = 5

# Answers with no row (a temporary chat's: chat/temporary.py) in this process, by person: how many
# stream now, and when each began. Every start counts them with the stored ones, whichever door.
rowless_streaming: defaultdict[int, int] = defaultdict(int)
rowless_started: defaultdict[int, deque[datetime]] = defaultdict(deque)


def _count(messages: QuerySet[Message]) -> Subquery:
    """How many of `messages`, as a value of another query (a subquery: COUNT with no GROUP BY)."""
    counted = messages.order_by().annotate(n=Func("pk", function="COUNT", output_field=IntegerField()))
    return Subquery(counted.values("n")[:1], output_field=IntegerField())


class TooManyAnswers(Exception):
    """A person may not start another answer now: `retry_after` says in how many seconds to try."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


def check_room_for_an_answer(owner_pk: int, *, rowless: datetime | None = None) -> None:
    """Raise TooManyAnswers if the person may not start an answer now.

    Answers that have no row count too (`rowless_streaming`, `rowless_started`); `rowless` is the
    start of the one being checked, if it is such an answer, registered already and not counted.

    Call it inside the transaction that saves the answer. It locks the person's row until that
    transaction ends (on SQLite, whose transactions here begin IMMEDIATE, the whole database is
    already locked), so a second request of theirs waits here until the first has saved its answer.
    """
    at_once, per_minute = settings.CHAT_MAX_ANSWERS_AT_ONCE, settings.CHAT_MAX_ANSWERS_PER_MINUTE
    now = timezone.now()
    streaming, recent = Q(status=Message.Status.STREAMING), Q(created_at__gt=now - MINUTE)
    # Answers the site generated (they name the worker that did): not the earlier messages an
    # OpenAI request brings, nor imported ones, which are saved as answers too.
    answers = Message.objects.filter(conversation__owner=owner_pk, role=Message.Role.ASSISTANT).exclude(worker="")
    owners = get_user_model()._default_manager.filter(pk=owner_pk).select_for_update()
    # Where the lock is the transaction's own (SQLite), the counts come with the person's row: one
    # statement, every turn. A row lock (PostgreSQL) needs them in a statement of their own, after
    # it: READ COMMITTED takes a statement's snapshot as it starts, before it waits for the lock, so
    # counts read with the lock would miss the answer whoever held it has just saved.
    with_the_row = bool(at_once or per_minute) and not connection.features.has_select_for_update
    if with_the_row:
        owners = owners.annotate(streaming=_count(answers.filter(streaming)), recent=_count(answers.filter(recent)))
    owner = owners.values(*("is_superuser", "streaming", "recent") if with_the_row else ("is_superuser",)).get()
    if owner["is_superuser"] and settings.CHAT_LIMITS_EXEMPT_SUPERUSERS:
        return
    if not (at_once or per_minute):
        return
    # Both counts in one query, over only the rows that either one counts.
    counts = (
        {"streaming": owner["streaming"], "recent": owner["recent"]}
        if with_the_row
        else answers.filter(streaming | recent).aggregate(
            streaming=Count("pk", filter=streaming), recent=Count("pk", filter=recent)
        )
    )
    also_started = [started for started in rowless_started.get(owner_pk, ()) if started is not rowless]
    counts["streaming"] += rowless_streaming.get(owner_pk, 0) - (rowless is not None)
    counts["recent"] += sum(1 for started in also_started if started > now - MINUTE)
    if at_once and counts["streaming"] >= at_once:
        raise TooManyAnswers(
            ngettext(
                "You already have %(count)s answer being generated, the most at once. "
                "Send this when one of them has finished (or stop one).",
                "You already have %(count)s answers being generated, the most at once. "
                "Send this when one of them has finished (or stop one).",
                at_once,
            )
            % {"count": at_once},
            RETRY_WHILE_GENERATING,
        )
    if per_minute and counts["recent"] >= per_minute:
        # Room comes back when the per_minute-th newest of them is a minute old; only a refusal
        # asks which one that is.
        stored = answers.filter(recent).order_by("-created_at").values_list("created_at", flat=True)
        newest = sorted([*stored, *also_started], reverse=True)
        wait = max(1, math.ceil((newest[per_minute - 1] + MINUTE - now).total_seconds()))
        raise TooManyAnswers(
            ngettext(
                "You have started %(count)s answer in the last minute, the most allowed.",
                "You have started %(count)s answers in the last minute, the most allowed.",
                per_minute,
            )
            % {"count": per_minute}
            + " "
            + ngettext("Try again in %(wait)s second.", "Try again in %(wait)s seconds.", wait) % {"wait": wait},
            wait,
        )
