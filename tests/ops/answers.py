"""Answers written straight to the database, as many as a test needs, on the day it says."""

from datetime import datetime, time, timedelta

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
