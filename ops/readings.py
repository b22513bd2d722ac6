"""Looking at the model server for the operator's view: its health and its load, kept a while.

A reading is taken when the view asks and the newest is older than READING_INTERVAL, so however
many operators watch, vLLM is asked at most that often. Throughput is vLLM's generated-token
counter's rise since the reading before that had it, over the time between them.

The site's /healthz, which every open chat page asks every 15 seconds (and monitors may too), notes
what it found at most once per HEALTH_NOTE_INTERVAL: the health history then also covers the times
nobody had the operator's view open.
"""

import asyncio
import logging
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from engine import vllm_client
from engine.vllm_client import Health, ServerLoad
from ops.models import ServerReading

log = logging.getLogger(__name__)

READING_INTERVAL = timedelta(seconds=5)
HEALTH_NOTE_INTERVAL = timedelta(minutes=1)
# Beyond this gap the rate would average over a time nobody watched: not worth drawing.
RATE_GAP = timedelta(minutes=5)
KEPT = timedelta(hours=24)


async def take_reading() -> ServerReading:
    now = timezone.now()
    latest = await ServerReading.objects.order_by("-taken_at").afirst()
    # A note of /healthz's says nothing of the load: a server it found up is read again.
    if latest is not None and now - latest.taken_at < READING_INTERVAL and not _health_only(latest):
        return latest
    health, load = await asyncio.gather(vllm_client.check_health(), vllm_client.read_load())
    reading = ServerReading(taken_at=now, healthy=health.ok, detail=health.detail)
    if isinstance(load, ServerLoad):
        reading.running, reading.waiting = load.running, load.waiting
        reading.kv_cache_usage, reading.generation_tokens = load.kv_cache_usage, load.generation_tokens
        counted = await ServerReading.objects.filter(generation_tokens__isnull=False).order_by("-taken_at").afirst()
        reading.generation_throughput = _throughput(counted, reading)
    elif health.ok:
        reading.detail = f"{health.detail}; {load.message}"
    await reading.asave()
    await ServerReading.objects.filter(taken_at__lt=now - KEPT).adelete()
    return reading


def _health_only(reading: ServerReading) -> bool:
    return reading.healthy and reading.running is None


def _throughput(before: ServerReading | None, now: ServerReading) -> float | None:
    if before is None or before.generation_tokens is None or now.generation_tokens is None:
        return None
    elapsed = now.taken_at - before.taken_at
    # A counter that went down is a restarted vLLM: no rate across it.
    if elapsed > RATE_GAP or now.generation_tokens < before.generation_tokens:
        return None
    return (now.generation_tokens - before.generation_tokens) / elapsed.total_seconds()


async def note_health_checked(sender: object, health: Health, **kwargs: object) -> None:
    """`note_health`, as a receiver of chat.signals.health_checked (connected in ops/apps.py)."""
    await note_health(health)


async def note_health(health: Health) -> None:
    """Keep what /healthz found, unless a reading was kept less than HEALTH_NOTE_INTERVAL ago."""
    now = timezone.now()
    try:
        if await ServerReading.objects.filter(taken_at__gt=now - HEALTH_NOTE_INTERVAL).aexists():
            return
        await ServerReading.objects.acreate(taken_at=now, healthy=health.ok, detail=health.detail)
    except DatabaseError:
        # The health check answers what it found all the same: the note is for the history only.
        log.exception("could not keep the model server's health")
