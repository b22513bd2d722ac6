from datetime import timedelta

from django.db import models
from django.utils import timezone


class ServerReadingQuerySet(models.QuerySet["ServerReading"]):
    def recent(self, seconds: int) -> "ServerReadingQuerySet":
        return self.filter(taken_at__gte=timezone.now() - timedelta(seconds=seconds)).order_by("taken_at")


class ServerReading(models.Model):
    """One look at the model server: whether it answered, and its load from /metrics.

    Taken by the operator's view while it is open; a few hours of them draw the server's recent
    health and load, and older ones are deleted as new ones come.
    """

    taken_at = models.DateTimeField(db_index=True)
    healthy = models.BooleanField()
    detail = models.TextField(blank=True)
    running = models.FloatField(null=True)
    waiting = models.FloatField(null=True)
    kv_cache_usage = models.FloatField(null=True, help_text="0 to 1")
    generation_tokens = models.FloatField(null=True, help_text="vLLM's counter when read")
    # Tokens a second since the reading before, when both had the counter and vLLM did not restart.
    generation_throughput = models.FloatField(null=True)

    objects = ServerReadingQuerySet.as_manager()

    class Meta:
        ordering = ["-taken_at"]

    def __str__(self) -> str:
        return f"{self.taken_at:%Y-%m-%d %H:%M:%S} {'up' if self.healthy else 'down'}"
