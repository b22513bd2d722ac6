"""engine.vllm_status: what vLLM says of itself: /health (`check_health`), /v1/models (`list_models`), /metrics.

For the health light, the admin's engines and the operator's view; each asked within SHORT_REQUEST
seconds, never cached here (the served model is: engine/served_model.py).
"""

import json
import math
import re
from dataclasses import dataclass

import aiohttp
from django.conf import settings

from engine import http_client
from engine.endpoints import Endpoint, default_endpoint
from engine.served_model import SHORT_REQUEST, ServedModel, _remember, get_json
from engine.vllm_errors import _connect_failure, describe_http_error
from engine.vllm_events import Failed


async def list_models(endpoint: Endpoint) -> list[ServedModel] | Failed:
    """Every model `endpoint` serves now, as its /v1/models lists them (asked now, not cached), or
    `Failed` saying why it could not be asked."""
    try:
        timeout = http_client.timeout(SHORT_REQUEST)
        async with await http_client.request("GET", endpoint, "/models", timeout=timeout) as response:
            status, content = response.status, await response.read()
        if status != 200:
            return Failed(describe_http_error(status, content, key_sent=bool(endpoint.api_key)), unreachable=True)
        listed = json.loads(content)["data"]
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        return Failed(f"The model server did not answer properly: {exc or type(exc).__name__}", unreachable=True)
    return [
        ServedModel(
            id=str(entry["id"]),
            max_model_len=length
            if isinstance(length := entry.get("max_model_len"), int) and length > 0
            else settings.VLLM_MAX_MODEL_LEN,
            root=str(entry.get("root") or ""),
            live=True,
        )
        for entry in (listed if isinstance(listed, list) else [])
        if isinstance(entry, dict) and entry.get("id")
    ]


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


async def check_health(endpoint: Endpoint | None = None) -> Health:
    """Ready means /health answers 200 and /v1/models lists a model (the one named in
    VLLM_SERVED_MODEL_NAME, if that is set). What it lists is noted as the model in use."""
    endpoint = endpoint or default_endpoint()
    try:
        status, _ = await get_json(endpoint, "/health", beside_v1=True)
        if status != 200:
            return Health(False, f"vLLM answers /health with {status}")
        status, models = await get_json(endpoint, "/models")
        if status in (401, 403):
            return Health(
                False, describe_http_error(status, json.dumps(models).encode(), key_sent=bool(endpoint.api_key))
            )
        listed = models.get("data", []) if status == 200 and isinstance(models, dict) else []
        served = [m.get("id") for m in listed]
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Health(False, _connect_failure(exc, endpoint))
    except (aiohttp.ClientError, TimeoutError, AttributeError) as exc:
        return Health(False, f"vLLM did not answer properly: {exc or type(exc).__name__}")
    model = _remember(listed)
    if not model.live:
        if wanted := settings.VLLM_SERVED_MODEL_NAME:
            return Health(False, f"vLLM serves {served or 'no model'}, not {wanted!r}")
        return Health(False, "vLLM serves no model")
    return Health(True, f"vLLM serves {model.id}")


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """What vLLM's /metrics says now, summed over its engines; None where it does not say."""

    running: float | None  # requests generating now
    waiting: float | None  # requests queued for a slot
    kv_cache_usage: float | None  # the share of the KV cache in use, 0 to 1
    generation_tokens: float | None  # tokens generated since vLLM started: a counter, for a rate


# vLLM's metric names (v0.32's vllm/v1/metrics/loggers.py); the KV-cache gauge had another name
# before vLLM 0.10. A counter's samples end in `_total`, as prometheus_client writes them.
_LOAD_METRICS = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "generation_tokens": ("vllm:generation_tokens_total",),
}
# A sample line of the Prometheus text format: a name, maybe {labels}, a value, maybe a timestamp.
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{.*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, list[float]]:
    """Each metric's samples, one per set of labels (vLLM labels them by engine and model)."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not (match := _SAMPLE.match(line)):
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if not math.isfinite(value):
            continue  # NaN or ±Inf: nothing a figure can show
        samples.setdefault(match.group(1), []).append(value)
    return samples


async def read_load(endpoint: Endpoint | None = None) -> ServerLoad | Failed:
    """vLLM's load now, from its /metrics."""
    endpoint = endpoint or default_endpoint()
    try:
        timeout = http_client.timeout(SHORT_REQUEST)
        async with await http_client.request("GET", endpoint, "/metrics", beside_v1=True, timeout=timeout) as response:
            status, text = response.status, (await response.read()).decode(errors="replace")
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Failed(f"vLLM did not answer /metrics: {exc or type(exc).__name__}")
    if status != 200:
        return Failed(f"vLLM answers /metrics with {status}")
    return server_load(text)


def server_load(metrics: str) -> ServerLoad:
    """Requests and tokens summed over vLLM's engines; the KV cache's use is their mean, each engine
    having a cache of its own."""
    samples = parse_metrics(metrics)

    def first(field: str) -> list[float] | None:
        return next((samples[name] for name in _LOAD_METRICS[field] if name in samples), None)

    kv_cache = first("kv_cache_usage")
    return ServerLoad(
        running=sum(running) if (running := first("running")) is not None else None,
        waiting=sum(waiting) if (waiting := first("waiting")) is not None else None,
        kv_cache_usage=sum(kv_cache) / len(kv_cache) if kv_cache else None,
        generation_tokens=sum(tokens) if (tokens := first("generation_tokens")) is not None else None,
    )
