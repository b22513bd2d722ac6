"""Answers written straight to the database, as many as a test needs, on the day it says."""

from datetime import datetime, time, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from chat.models import Conversation, Message


def on_day(days_ago: int, hour: int = 12) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return timezone.make_aware(datetime.combine(day, time(hour)))


def store_answers(conversation: Conversation, answers: list[dict], days_ago: int = 0) -> list[Message]:
    """Saves the answers (their fields as given, complete unless they say) dated `days_ago`."""
    made = Message.objects.bulk_create(
        [
            Message(conversation=conversation, role=Message.Role.ASSISTANT, content="answer", **fields)
            for fields in answers
        ],
        batch_size=2000,
    )
    # created_at is auto_now_add, which bulk_create sets to now whatever the object says.
    pks = [m.pk for m in made]
    Message.objects.filter(pk__gte=min(pks), pk__lte=max(pks)).update(created_at=on_day(days_ago))
    return made


def copy_answers(answers: list[Message], conversation: Conversation, days_ago: int) -> None:
    """Stores a copy of each of `answers` in `conversation`, dated `days_ago`: one INSERT ... SELECT,
    where bulk_create spends seconds per 10,000 rows building its SQL in Python."""
    columns = [field.column for field in Message._meta.concrete_fields if not field.primary_key and field.column]
    given: dict[str, Any] = {"conversation_id": conversation.pk, "created_at": on_day(days_ago)}
    selected = ["%s" if column in given else column for column in columns]
    table = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"SELECT {', '.join(selected)} FROM {table} WHERE id BETWEEN %s AND %s",
            [*(given[column] for column in columns if column in given), answers[0].pk, answers[-1].pk],
        )
