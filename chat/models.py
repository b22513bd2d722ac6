from django.conf import settings
from django.db import models


def default_temperature() -> float:
    return settings.CHAT_DEFAULT_TEMPERATURE


def default_max_tokens() -> int:
    return settings.CHAT_DEFAULT_MAX_TOKENS


def default_top_p() -> float:
    return settings.CHAT_DEFAULT_TOP_P


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def owned_by(self, user) -> "ConversationQuerySet":
        # Every view reaches a conversation through this, so another user's is simply not found.
        return self.filter(owner=user) if user.is_authenticated else self.none()

    def newest_first(self) -> "ConversationQuerySet":
        return self.order_by("-updated_at", "-pk")


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=default_temperature)
    max_tokens = models.PositiveIntegerField(default=default_max_tokens)
    top_p = models.FloatField(default=default_top_p)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class MessageQuerySet(models.QuerySet["Message"]):
    def streaming(self) -> "MessageQuerySet":
        return self.filter(status=Message.Status.STREAMING)

    def in_order(self) -> "MessageQuerySet":
        return self.order_by("created_at", "pk")

    def usable_as_context(self) -> "MessageQuerySet":
        """What the model may see of a conversation: the prompts, and every answer that has text."""
        return (
            self.exclude(status=Message.Status.STREAMING)
            .filter(models.Q(role=Message.Role.USER) | ~models.Q(content=""))
            .in_order()
        )


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE, db_index=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    time_to_first_token = models.FloatField(null=True, blank=True, help_text="Seconds")
    duration = models.FloatField(null=True, blank=True, help_text="Seconds")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.role} {self.status}: {self.content[:60]}"

    @property
    def is_streaming(self) -> bool:
        return self.status == self.Status.STREAMING
