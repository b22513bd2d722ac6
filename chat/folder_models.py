"""`Folder`: a person's named group of conversations in the sidebar (chat/folders.py).

Beside chat/models.py, which re-exports it, to keep that module a size one can read whole.
"""

from django.conf import settings
from django.db import models


class Folder(models.Model):
    """A person's named group of conversations in the sidebar (one level: no folder in a folder)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="folder_name_once_per_owner")]

    def __str__(self) -> str:
        return self.name
