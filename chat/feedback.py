"""Feedback on answers: a person's thumbs up or down, with an optional comment, one per answer.

The page (chat/feedback_views.py) and the REST API (api/feedback.py) give it through `give`; the
operator's view (ops/feedback.py) reads the rates and comments, and exports them as JSON for
whoever tunes the model.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from django import forms
from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils.translation import gettext_lazy as _

from chat.forms import PageForm
from chat.models import Feedback, Message, Someone

RATINGS = {"up": Feedback.Rating.UP, "down": Feedback.Rating.DOWN}
LATEST = 50  # comments the operator's view lists


class FeedbackForm(PageForm):
    rating = forms.ChoiceField(
        choices=[(name, name) for name in RATINGS], error_messages={"required": _("Choose thumbs up or down.")}
    )
    comment = forms.CharField(
        required=False,
        max_length=Feedback.COMMENT_MAX,
        error_messages={"max_length": _("A comment is at most %(limit_value)d characters.")},
    )
    # (Django's CharField refuses NUL, which PostgreSQL's text cannot hold.)


def rating_name(rating: int) -> Literal["up", "down"]:
    return "up" if rating == Feedback.Rating.UP else "down"


async def give(person: Someone, answer: Message, rating: str, comment: str) -> Feedback:
    """The person's feedback on `answer`, new or changed: one per person and answer."""
    feedback, _created = await Feedback.objects.aupdate_or_create(
        message=answer, person_id=person.pk, defaults={"rating": RATINGS[rating], "comment": comment}
    )
    return feedback


async def of(person: Someone, answer: Message) -> Feedback | None:
    return await Feedback.objects.filter(message=answer, person_id=person.pk).afirst()


@dataclass(frozen=True)
class Rate:
    model: str
    day: date
    up: int
    down: int

    @property
    def share_up(self) -> float:
        return self.up / (self.up + self.down)


def rates(since: datetime) -> list[Rate]:
    """Thumbs up and down per model and per day (of the latest change), newest day first."""
    rows = (
        Feedback.objects.filter(updated_at__gte=since)
        .annotate(day=TruncDate("updated_at"))
        .values("message__model_name", "day")
        .annotate(
            up=Count("pk", filter=Q(rating=Feedback.Rating.UP)), down=Count("pk", filter=Q(rating=Feedback.Rating.DOWN))
        )
        .order_by("-day", "message__model_name")
    )
    return [Rate(row["message__model_name"], row["day"], row["up"], row["down"]) for row in rows]


def latest_comments(count: int = LATEST) -> list[Feedback]:
    return list(
        Feedback.objects.exclude(comment="").select_related("message", "person").order_by("-updated_at", "-pk")[:count]
    )


def export() -> list[dict[str, Any]]:
    """Every rating with the answer it rates and the prompt before it, for tuning the model.

    People are not named: whoever tunes the model needs the text and the verdict, not who gave it.
    """
    rows = Feedback.objects.select_related("message", "message__parent").order_by("pk")
    return [
        {
            "rating": rating_name(feedback.rating),
            "comment": feedback.comment,
            "model": feedback.message.model_name,
            "prompt": feedback.message.parent.content if feedback.message.parent else "",
            "answer": feedback.message.content,
            "answer_id": feedback.message_id,
            "rated_at": feedback.updated_at.isoformat(),
        }
        for feedback in rows.iterator()
    ]
