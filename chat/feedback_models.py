"""`Feedback`: a person's thumbs up or down on an answer, with an optional comment (chat/feedback.py).

Beside chat/models.py, which re-exports it, to keep that module a size one can read whole.
"""

from django.conf import settings
from django.db import models


class Feedback(models.Model):
    """A person's thumbs up or down on an answer, with an optional comment (chat/feedback.py)."""

    class Rating(models.IntegerChoices):
        UP = 1
        DOWN = -1

    COMMENT_MAX = 2000

    message = models.ForeignKey("chat.Message", on_delete=models.CASCADE, related_name="feedback")
    person = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=COMMENT_MAX)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "person"], name="one_feedback_per_person_and_answer")]

    def __str__(self) -> str:
        return f"{'up' if self.rating == self.Rating.UP else 'down'} on answer {self.message_id}"
