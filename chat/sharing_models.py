"""`SharedLink`: a read-only link to a conversation's branch as it was when shared (chat/sharing.py).

Beside chat/models.py, which re-exports it, to keep that module a size one can read whole.
"""

from django.contrib.auth.models import AnonymousUser, User
from django.db import models
from django.utils import timezone

from chat.rules import TITLE_LENGTH


class SharedLinkQuerySet(models.QuerySet["SharedLink"]):
    def owned_by(self, user: User | AnonymousUser) -> "SharedLinkQuerySet":
        # As conversations: another person's link is simply not found (chat/sharing.py).
        return self.filter(conversation__owner=user) if user.is_authenticated else self.none()


class SharedLink(models.Model):
    """A read-only link to a conversation's branch as it was when shared (chat/sharing.py).

    The link holds its own copy of that branch's prompts and answers: later turns, other branches,
    the settings and the system prompt are not in it. Sharing again refreshes the copy.
    """

    class Audience(models.TextChoices):
        SIGNED_IN = "signed_in"
        ANYONE = "anyone"

    conversation = models.OneToOneField("chat.Conversation", on_delete=models.CASCADE, related_name="shared_link")
    # The link's secret: whoever has it may read the copy (as the audience allows), so it is random.
    token = models.CharField(max_length=64, unique=True, editable=False)
    audience = models.CharField(max_length=16, choices=Audience.choices, default=Audience.SIGNED_IN)
    title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    # [{"role": "user" | "assistant", "content": "…"}, …], from the first prompt down.
    messages = models.JSONField(default=list)
    shared_at = models.DateTimeField(default=timezone.now)

    objects = SharedLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-shared_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.title or 'conversation'} ({self.audience})"
