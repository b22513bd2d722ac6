"""`Attachment`: a file a person brought to a prompt (chat/attachments.py), and `FileChoice`, what
they want done with one too long for the model's context.

Beside chat/models.py, which re-exports them, to keep that module a size one can read whole.
"""

import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import models
from django.db.models import Q, Sum
from django.utils import timezone

# As chat.models has it (which imports this module, so cannot be imported from here).
type Someone = User | AnonymousUser


class AttachmentQuerySet(models.QuerySet["Attachment"]):
    def owned_by(self, user: Someone) -> "AttachmentQuerySet":
        # Every door reaches a file through this, so another person's is simply not found.
        return self.filter(owner=user) if user.is_authenticated else self.none()

    def unsent(self) -> "AttachmentQuerySet":
        return self.filter(message__isnull=True)

    def expired_unsent(self) -> "AttachmentQuerySet":
        """Files uploaded and never sent for CHAT_UNSENT_FILE_HOURS (another tab's, the API's, a closed page's)."""
        cutoff = timezone.now() - timedelta(hours=settings.CHAT_UNSENT_FILE_HOURS)
        return self.unsent().filter(created_at__lt=cutoff)

    def bytes_stored(self) -> int:
        return int(self.aggregate(total=Sum("size"))["total"] or 0)


class Attachment(models.Model):
    class Kind(models.TextChoices):
        TEXT = "text"
        MARKDOWN = "markdown"
        CSV = "csv"
        JSON = "json"
        CODE = "code"
        PDF = "pdf"
        DOCX = "docx"
        HTML = "html"

    # The only id any door shows: a file's number would tell how many others have sent files.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments")
    # Null until the prompt it came with is sent; then it is kept (and deleted) with that prompt.
    message = models.ForeignKey(
        "chat.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    # Shown, and offered as the download's name; never a path (the stored file is named by `id`).
    name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # What the model reads: a PDF's pages separated by form feeds (PAGE_BREAK).
    text = models.TextField(blank=True)
    pages = models.PositiveIntegerField(null=True, blank=True)
    # Its place among the prompt's files, in the order they were attached.
    position = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AttachmentQuerySet.as_manager()

    PAGE_BREAK = "\f"

    class Meta:
        ordering = ["position", "created_at"]
        indexes = [
            models.Index(fields=["owner", "message"]),
            # For the worker's sweep of expired unsent files (chat/worker_jobs.py), which would
            # otherwise read every file's row, extracted text and all, each time.
            models.Index(fields=["created_at"], condition=Q(message__isnull=True), name="attachment_unsent_created"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        """Where the file's bytes are: a name made of the id alone, under CHAT_FILES_ROOT."""
        return stored_path(self.id)

    @property
    def page_texts(self) -> list[str]:
        return self.text.split(self.PAGE_BREAK) if self.pages else [self.text]


def stored_path(file_id: uuid.UUID) -> Path:
    # Two levels of folders from the id's hex, so that no folder holds every file.
    hexed = file_id.hex
    return Path(settings.CHAT_FILES_ROOT) / hexed[:2] / hexed


class FileChoice(models.Model):
    """What a person wants done with a file too long for the model's context: cut it (and say so
    in the answer's footer), or refuse the prompt before anything is sent."""

    class WhenTooLong(models.TextChoices):
        CUT = "cut"
        REFUSE = "refuse"

    person = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="file_choice"
    )
    when_too_long = models.CharField(max_length=8, choices=WhenTooLong.choices, default=WhenTooLong.CUT)

    def __str__(self) -> str:
        return f"{self.person}: {self.when_too_long}"
