from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy

from engine.endpoints import Endpoint


def _base_url(value: str) -> None:
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValidationError(gettext_lazy("An http:// or https:// address, up to and including /v1."))


class EngineQuerySet(models.QuerySet["Engine"]):
    def enabled(self) -> "EngineQuerySet":
        return self.filter(enabled=True).order_by("name")


class Engine(models.Model):
    """An OpenAI-compatible server staff added beside the default one (VLLM_BASE_URL): its models are
    offered to everyone (engine/catalog.py)."""

    name = models.CharField(max_length=100, unique=True, help_text=gettext_lazy("Shown to operators."))
    base_url = models.CharField(
        max_length=500,
        validators=[_base_url],
        help_text=gettext_lazy("Up to and including /v1, e.g. http://gpu2:8000/v1."),
    )
    # Secret: never shown back (the admin's field is write-only), never logged, in no export or API.
    api_key = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EngineQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.base_url = self.base_url.strip().rstrip("/")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.base_url, self.api_key)
