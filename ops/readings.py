"""Looking at the model server for the operator's view: its health and its load, kept a while.

A reading is taken when the view asks and the newest is older than READING_INTERVAL, so however
many operators watch, vLLM is asked at most that often. Throughput is vLLM's generated-token
counter's rise since the reading before, over the time between them.
"""

import asyncio
from datetime import timedelta

from django.utils import timezone

from engine import vllm_client
from engine.vllm_client import ServerLoad
from ops.models import ServerReading

READING_INTERVAL = timedelta(seconds=5)
# Beyond this gap the rate would average over a time nobody watched: not worth drawing.
RATE_GAP = timedelta(minutes=5)
KEPT = timedelta(hours=24)


async def take_reading() -> ServerReading:
    now = timezone.now()
    latest = await ServerReading.objects.order_by("-taken_at").afirst()
    if latest is not None and now - latest.taken_at < READING_INTERVAL:
        return latest
    health, load = await asyncio.gather(vllm_client.check_health(), vllm_client.read_load())
    reading = ServerReading(taken_at=now, healthy=health.ok, detail=health.detail)
    if isinstance(load, ServerLoad):
        reading.running, reading.waiting = load.running, load.waiting
        reading.kv_cache_usage, reading.generation_tokens = load.kv_cache_usage, load.generation_tokens
        reading.generation_throughput = _throughput(latest, reading)
    elif health.ok:
        reading.detail = f"{health.detail}; {load.message}"
    await reading.asave()
    await ServerReading.objects.filter(taken_at__lt=now - KEPT).adelete()
    return reading


def _throughput(before: ServerReading | None, now: ServerReading) -> float | None:
    if before is None or before.generation_tokens is None or now.generation_tokens is None:
        return None
    elapsed = now.taken_at - before.taken_at
    # A counter that went down is a restarted vLLM: no rate across it.
    if elapsed > RATE_GAP or now.generation_tokens < before.generation_tokens:
        return None
    return (now.generation_tokens - before.generation_tokens) / elapsed.total_seconds()
