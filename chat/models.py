import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import pgettext_lazy

from chat.attachment_models import Attachment as Attachment
from chat.attachment_models import FileChoice as FileChoice
from chat.feedback_models import Feedback as Feedback
from chat.folder_models import Folder as Folder
from chat.rules import TITLE_LENGTH
from chat.sharing_models import SharedLink as SharedLink

# The largest id SQLite and PostgreSQL store (a signed 64-bit integer): a larger one in a URL or a
# request is refused as not found or invalid, never passed to the database to overflow.
MAX_ID = 2**63 - 1


def default_temperature() -> float:
    return settings.CHAT_DEFAULT_TEMPERATURE


def default_max_tokens() -> int:
    return settings.CHAT_DEFAULT_MAX_TOKENS


def default_top_p() -> float:
    return settings.CHAT_DEFAULT_TOP_P


# Whoever a request comes from, as Django's `request.user` has it: someone signed in, or nobody.
type Someone = User | AnonymousUser


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def owned_by(self, user: Someone) -> "ConversationQuerySet":
        # Every view reaches a conversation through this, so another user's is simply not found.
        return self.filter(owner=user) if user.is_authenticated else self.none()

    def newest_first(self) -> "ConversationQuerySet":
        return self.order_by("-updated_at", "-pk")

    # Where the sidebar shows a conversation (chat/folders.py): pinned ones at the top, then each
    # folder's, then the rest; an archived one in none of them (but still in search and exports).
    def listed(self) -> "ConversationQuerySet":
        return self.filter(archived_at__isnull=True)

    def unfiled(self) -> "ConversationQuerySet":
        return self.listed().filter(pinned=False, folder__isnull=True)

    def archived(self) -> "ConversationQuerySet":
        return self.filter(archived_at__isnull=False)


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_LENGTH, blank=True)
    # A title the person gave is theirs: the model's name for the conversation never replaces it.
    title_set_by_person = models.BooleanField(default=False)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=default_temperature)
    max_tokens = models.PositiveIntegerField(default=default_max_tokens)
    top_p = models.FloatField(default=default_top_p)
    # The model that answers, as the engines name it (engine/catalog.py); empty: the default model.
    model = models.CharField(max_length=200, blank=True)
    # Where the next prompt goes: what the page shows, what the API returns as the conversation's
    # messages, and what the model sees as history, all follow this one field (chat/branches.py).
    branch_tip = models.ForeignKey(
        "Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The last message of the branch shown.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Kept at the top of the sidebar, above the folders.
    pinned = models.BooleanField(default=False)
    # One level of folders: deleting one gives its conversations back to the list.
    folder = models.ForeignKey("Folder", null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    # Out of the sidebar, not deleted: search, exports and the archive page still find it.
    archived_at = models.DateTimeField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [
            models.Index(fields=["owner", "-updated_at"]),
            # One per sidebar list (chat/folders.py), each read a page at a time in this order: with
            # 10,000 conversations a page is an index range, not a sort of them all. `pinned` is a
            # column, not in a condition: SQLite uses a partial index only if the query's WHERE
            # holds its condition word for word, and Django sends `pinned = %s` with a parameter.
            # The list and the pinned ones (the list's conversations in a folder are passed over).
            models.Index(
                fields=["owner", "pinned", "-updated_at", "-id"],
                condition=models.Q(archived_at__isnull=True),
                name="conversation_listed",
            ),
            models.Index(
                fields=["folder", "pinned", "-updated_at", "-id"],
                condition=models.Q(archived_at__isnull=True),
                name="conversation_in_folder",
            ),
            models.Index(
                fields=["owner", "-archived_at", "-id"],
                condition=models.Q(archived_at__isnull=False),
                name="conversation_archived",
            ),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    # What the settings panel saves.
    SETTINGS = ("system_prompt", "temperature", "max_tokens", "top_p", "model")

    def change_settings(
        self,
        *,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        model: str | None = None,
    ) -> None:
        """Use these settings for the next turns; a setting left None is kept as it is.

        The names set are remembered (`changed_settings`): a turn saves only those, so that it does
        not write back the others as this copy had them over a change made meanwhile elsewhere.
        """
        changes = {
            "system_prompt": system_prompt,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "top_p": top_p,
            "model": model,
        }
        for name, value in changes.items():
            if value is not None:
                setattr(self, name, value)
                self.changed_settings.add(name)

    @property
    def changed_settings(self) -> set[str]:
        # Made on first use rather than in __init__, which Django's docs advise models not to override.
        if "_changed_settings" not in self.__dict__:
            self.__dict__["_changed_settings"] = set()
        changed: set[str] = self.__dict__["_changed_settings"]
        return changed


class PresetQuerySet(models.QuerySet["Preset"]):
    def seen_by(self, user: Someone) -> "PresetQuerySet":
        """The person's own presets and those staff shared with everyone."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(models.Q(owner=user) | models.Q(shared=True))

    def changeable_by(self, user: Someone) -> "PresetQuerySet":
        """Their own unshared ones; a shared one, staff only (whoever made it: one who has left the
        staff no longer changes what everyone sees)."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self.filter(models.Q(owner=user) | models.Q(shared=True))
        return self.filter(owner=user, shared=False)


class Preset(models.Model):
    """Saved settings to start a new chat with: a person's own, or shared by staff with everyone."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets")
    name = models.CharField(max_length=100)
    shared = models.BooleanField(default=False, help_text="Seen by everyone; only staff make these.")
    system_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=200, blank=True)
    temperature = models.FloatField(default=default_temperature)
    top_p = models.FloatField(default=default_top_p)
    max_tokens = models.PositiveIntegerField(default=default_max_tokens)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PresetQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        indexes = [models.Index(fields=["owner", "name"]), models.Index(fields=["shared", "name"])]

    def __str__(self) -> str:
        return self.name


class ModelChoice(models.Model):
    """The model a person last chose on the page: their new chats start with it."""

    person = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="model_choice"
    )
    model = models.CharField(max_length=200)

    def __str__(self) -> str:
        return f"{self.person}: {self.model}"


class MessageQuerySet(models.QuerySet["Message"]):
    def of(self, user: Someone) -> "MessageQuerySet":
        """The messages in the user's conversations: how every door reaches one."""
        return self.filter(conversation__owner=user) if user.is_authenticated else self.none()

    def answers_of(self, user: Someone) -> "MessageQuerySet":
        """The answers in the user's conversations: how every door reaches one to follow or stop."""
        return self.of(user).filter(role=Message.Role.ASSISTANT)

    def streaming(self) -> "MessageQuerySet":
        return self.filter(status=Message.Status.STREAMING)

    def lease_expired(self) -> "MessageQuerySet":
        """Answers still "streaming" whose owner has not renewed its lease in time: it died (or ran
        before answers had leases). Nothing generates them any more. Judged on the database's clock,
        on which leases are written (chat/leases.py), not this host's."""
        return self.streaming().filter(models.Q(lease_until__lt=Now()) | models.Q(lease_until__isnull=True))

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

    # What the page calls each status, in the reader's language. Not the choices' labels: those
    # are part of the migrations' state, and the words are no concern of the database's.
    STATUS_LABELS = {
        Status.STREAMING: pgettext_lazy("answer", "Streaming"),
        Status.COMPLETE: pgettext_lazy("answer", "Complete"),
        Status.STOPPED: pgettext_lazy("answer", "Stopped"),
        Status.ERROR: pgettext_lazy("answer", "Error"),
        Status.INTERRUPTED: pgettext_lazy("answer", "Interrupted"),
    }

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The messages form a tree: regenerating adds an answer beside the old one, editing a prompt
    # a prompt beside it (chat/branches.py).
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="replies",
        help_text="The prompt this answers, or the answer this prompt follows; none for a first prompt.",
    )
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
    # While it streams: the worker process generating it, and until when that worker holds it. The
    # owner renews the lease as it goes; once it has expired, any worker may mark it interrupted.
    worker = models.CharField(max_length=100, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    # When a person asked to stop it on a worker that could not reach its owner through the
    # Channels layer (chat/relay.py): the owner stops at its next checkpoint or lease renewal.
    stop_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # An answer's prompt files cut to fit the context: what of each was used (chat/file_context.py).
    files_cut = models.JSONField(default=list, blank=True, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.role} {self.status}: {self.content[:60]}"

    @property
    def is_streaming(self) -> bool:
        return self.status == self.Status.STREAMING

    @property
    def status_label(self) -> str:
        return str(self.STATUS_LABELS[self.Status(self.status)])

    @property
    def tokens_per_second(self) -> float | None:
        """How fast the answer was written once it began: its tokens over the time after the first.

        The wait for the first token (a queue, the prompt's processing) is its own figure. The
        operator's view measures the same (ops/figures.py, TOKENS_PER_SECOND).
        """
        if not self.completion_tokens or self.duration is None or self.time_to_first_token is None:
            return None
        writing = self.duration - self.time_to_first_token
        return self.completion_tokens / writing if writing > 0 else None

    @property
    def has_failed(self) -> bool:
        """Ended without the whole answer for a reason other than a stop: its `error` says why."""
        return self.status in (self.Status.ERROR, self.Status.INTERRUPTED)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# How precisely a token's last use is recorded: at most one write a minute per token.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def user_for(self, secret: str) -> User | None:
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
    def issue(cls, user: User, name: str = "") -> tuple["ApiToken", str]:
        token = cls(user=user, name=name)
        secret = token.set_new_secret()
        token.save()
        return token, secret
