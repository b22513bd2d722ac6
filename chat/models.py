import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from engine import vllm_client


def default_temperature() -> float:
    return settings.CHAT_DEFAULT_TEMPERATURE


def default_max_tokens() -> int:
    return settings.CHAT_DEFAULT_MAX_TOKENS


def default_top_p() -> float:
    return settings.CHAT_DEFAULT_TOP_P


# The bounds of a conversation's generation settings: the page's form and the API's schemas both
# check them, with the same message.
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.01, 1.0)


def max_tokens_range() -> tuple[int, int]:
    # Read when asked, so it follows the model vLLM serves. The answer must leave room for at least
    # one prompt token in the context window.
    return 1, vllm_client.context_length() - 1


def out_of_range(label: str, low: float, high: float) -> str:
    return f"{label} must be between {low:g} and {high:g}."


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
    def answers_of(self, user) -> "MessageQuerySet":
        """The answers in the user's conversations: how every door reaches one to follow or stop."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(conversation__owner=user, role=Message.Role.ASSISTANT)

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


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# How precisely a token's last use is recorded: at most one write a minute per token.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def user_for(self, secret: str):
        """The active user a bearer secret belongs to, or None; notes when the token was last used."""
        token = self.select_related("user").filter(secret_hash=hash_secret(secret), user__is_active=True).first()
        if token is None:
            return None
        now = timezone.now()
        # Every API call passes through here, so most of them must not write.
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user


class ApiToken(models.Model):
    """A per-user secret for the REST API and the OpenAI-compatible endpoint.

    Only the secret's SHA-256 is stored: the secret itself is shown once, when it is issued.
    """

    SECRET_PREFIX = "cs_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for, e.g. the laptop's CLI.")
    prefix = models.CharField(max_length=16, editable=False, help_text="The secret's start, to tell tokens apart.")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name or 'token'} ({self.prefix}…)"

    def set_new_secret(self) -> str:
        """Give the token a fresh secret and return it; save the token afterwards."""
        secret = self.SECRET_PREFIX + secrets.token_urlsafe(32)
        self.prefix = secret[:10]
        self.secret_hash = hash_secret(secret)
        return secret

    @classmethod
    def issue(cls, user, name: str = "") -> tuple["ApiToken", str]:
        token = cls(user=user, name=name)
        secret = token.set_new_secret()
        token.save()
        return token, secret
