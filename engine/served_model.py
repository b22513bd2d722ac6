"""engine.served_model: `served_model()`, the model vLLM serves as its /v1/models says, cached SERVED_MODEL_TTL seconds.

A page, a turn and the health light each want it, and vLLM is restarted with another model seldom:
one question at a time per event loop, and the settings' assumption while vLLM cannot be asked.
"""

import asyncio
import json
import math
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

import aiohttp
from django.conf import settings

from chatsite.request_threads import give_back_connection
from engine import http_client
from engine.endpoints import Endpoint, default_endpoint
from engine.server import starter

# The site's own short requests (health, models, tokenize, metrics): their whole time.
SHORT_REQUEST = 3.0


# How long what /v1/models said is taken as true: a page, a turn and the health light each want
# it, and vLLM is restarted with another model seldom.
SERVED_MODEL_TTL = 10.0


@dataclass(frozen=True, slots=True)
class ServedModel:
    """The model vLLM serves, as its /v1/models says, or as the settings assume while it cannot say."""

    id: str  # the name to ask vLLM for; "" when not known
    max_model_len: int
    root: str = ""  # what vLLM loaded: a model hub id or a folder
    live: bool = False  # said by vLLM, not assumed

    @property
    def context_length(self) -> int:
        """The context a conversation must fit: vLLM's own, capped by CHAT_CONTEXT_LENGTH if set."""
        if settings.CHAT_CONTEXT_LENGTH:
            return min(settings.CHAT_CONTEXT_LENGTH, self.max_model_len)
        return self.max_model_len

    @property
    def is_starter(self) -> bool:
        return self.id == starter.SERVED_NAME or (bool(self.root) and starter.is_starter(self.root))

    @property
    def display_name(self) -> str:
        """The model's own name for people: "Qwen2-7B-Instruct", "SmolLM2-135M-Instruct (starter model)"."""
        if self.is_starter:
            return f"{starter.DISPLAY_NAME} (starter model)"
        # The hub id's or the folder's last part keeps the model's own capitals; the served name is lower case.
        return PurePath(self.root).name if self.root else (self.id or "unknown model")


_served: dict[str, Any] = {}


def assumed_model() -> ServedModel:
    """What the settings say, for while vLLM cannot be asked."""
    return ServedModel(settings.VLLM_SERVED_MODEL_NAME, settings.VLLM_MAX_MODEL_LEN)


def known_model() -> ServedModel:
    """The model vLLM was last seen serving (however long ago), else the settings' assumption.
    For code that cannot wait on the network, such as a form's bounds."""
    if _served.get("key") == _cache_key():
        known: ServedModel = _served["model"]
        return known
    return assumed_model()


def context_length() -> int:
    return known_model().context_length


def forget_served_model() -> None:
    _served.clear()
    _asking.clear()  # a question asked before this may be answered by the model that is gone


def doubt_served_model() -> None:
    """Ask vLLM again at the next turn (it may have been restarted with another model), but keep
    what it was last seen serving for while it cannot be asked: forgotten, a vLLM that said 404 and
    then went down made every request naming its model "no such model" (404) instead of "vLLM is
    down" (503), until it came back."""
    if "at" in _served:
        _served["at"] = -math.inf
    _asking.clear()


def _cache_key() -> tuple[str, str]:
    return (settings.VLLM_BASE_URL, settings.VLLM_SERVED_MODEL_NAME)


async def served_model() -> ServedModel:
    """The model vLLM serves: from its /v1/models at most every SERVED_MODEL_TTL seconds, the
    settings' assumption while it cannot be asked."""
    # Kept SERVED_MODEL_TTL seconds when it names a model. Not a vLLM never heard from (the settings
    # leave the name to it, and it was loading or down): kept, a turn with no model named would ask
    # it for model "" (its 404) for up to that long after it came up.
    if (
        _served.get("key") == _cache_key()
        and time.monotonic() - _served["at"] < SERVED_MODEL_TTL
        and (_served["model"].id or _served["model"].live)
    ):
        fresh: ServedModel = _served["model"]
        return fresh
    # One question at a time per event loop: a burst of turns that all find the note stale wait
    # for the same answer instead of each asking. Shielded: a caller that is cancelled (its client
    # left) does not cancel the others' question.
    # An engine may take seconds to answer: the caller's connection (a request's) goes back to the
    # pool meanwhile (chatsite/request_threads.py `give_back_connection`).
    await give_back_connection()
    loop = asyncio.get_running_loop()
    if (asking := _asking.get(loop)) is None or asking.done():
        asking = _asking[loop] = loop.create_task(_ask_served_model())
    return await asyncio.shield(asking)


_asking: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[ServedModel]]" = weakref.WeakKeyDictionary()


async def _ask_served_model() -> ServedModel:
    try:
        status, models = await get_json(default_endpoint(), "/models")
        listed = models["data"] if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError):
        listed = None
    return _remember(listed)


async def get_json(endpoint: Endpoint, path: str, *, beside_v1: bool = False) -> tuple[int, Any]:
    """GET `path` of `endpoint` (beside its /v1: `beside_v1`), within SHORT_REQUEST seconds: the
    status and the JSON body (None if it is not JSON). Raises aiohttp.ClientError or TimeoutError."""
    timeout = http_client.timeout(SHORT_REQUEST)
    async with await http_client.request("GET", endpoint, path, beside_v1=beside_v1, timeout=timeout) as response:
        content = await response.read()
    try:
        return response.status, json.loads(content) if content else None
    except ValueError:
        return response.status, None


def _remember(listed: Any) -> ServedModel:
    """Note what vLLM's /v1/models listed (None: it could not be asked) and return the model in use."""
    model = assumed_model()
    if listed is None and _served.get("key") == _cache_key() and _served["model"].id:
        # Down now: its answers still go to the model it was last seen serving (to fail saying vLLM
        # is down), not to the settings' assumption, which names none when the settings leave the
        # name to vLLM. Else a request naming that model was "no such model" (404) on every door.
        model = replace(_served["model"], live=False)
    if isinstance(listed, list):
        wanted = settings.VLLM_SERVED_MODEL_NAME
        for entry in listed:
            if isinstance(entry, dict) and entry.get("id") and (not wanted or entry["id"] == wanted):
                length = entry.get("max_model_len")
                model = ServedModel(
                    id=str(entry["id"]),
                    max_model_len=length if isinstance(length, int) and length > 0 else settings.VLLM_MAX_MODEL_LEN,
                    root=str(entry.get("root") or ""),
                    live=True,
                )
                break
    _served.update(key=_cache_key(), model=model, at=time.monotonic())
    return model
