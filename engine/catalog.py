"""The catalog: which models the site can use, on which engines, and which engine answers next.

An engine is an OpenAI-compatible server: the default one of VLLM_BASE_URL (and VLLM_API_KEY),
those of VLLM_ENGINES, and those staff added in the admin (engine.models.Engine). What each serves
is its /v1/models, asked at most every TTL seconds, one question at a time per engine and event
loop; an engine that does not answer is down, and its models are offered as unavailable.

Engines that serve the same model name are replicas: `pick` gives an answer to the one with the
fewest answers in flight from this process, and `stream_chat` asks another replica once when the
first fails before its first token (`Failed.unreachable`). An engine that failed so is left out
until it answers /v1/models again (asked again after TTL seconds).

With no model named, the default model answers: the one the default engine serves
(vllm_client.served_model(), which follows VLLM_SERVED_MODEL_NAME), so a site with one engine
behaves as it did before there were several.
"""

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from channels.db import database_sync_to_async
from django.conf import settings
from django.core import checks
from django.db import DatabaseError

from chatsite.request_threads import give_back_connection
from engine import vllm_client
from engine.endpoints import Endpoint, default_endpoint
from engine.models import Engine
from engine.vllm_client import Event, Failed, GenerationOptions, ServedModel, TextDelta

log = logging.getLogger(__name__)

TTL = vllm_client.SERVED_MODEL_TTL


@dataclass(slots=True)
class EngineState:
    """What the site knows of an engine: what it last said it serves, and its answers in flight."""

    endpoint: Endpoint
    models: list[ServedModel] = field(default_factory=list)  # as last listed, kept while it is down
    up: bool = False
    detail: str = ""  # why it is down
    asked_at: float = -math.inf
    in_flight: int = 0

    def serves(self, model: str) -> ServedModel | None:
        return next((served for served in self.models if served.id == model), None)


@dataclass(frozen=True, slots=True)
class Offered:
    """A model people may choose: its card, the engines that list it, and whether one is up now."""

    model: ServedModel
    engines: tuple[str, ...]
    available: bool


@dataclass(frozen=True, slots=True)
class Chosen:
    model: ServedModel
    endpoint: Endpoint


class NoSuchModel(Exception):
    """A model the site cannot use now; the text is for the person who asked for it."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model, self.message = model, message


class UnknownModel(NoSuchModel):
    def __init__(self, model: str) -> None:
        super().__init__(model, f"The model {model!r} does not exist here. Choose one of the models the site lists.")


class ModelUnavailable(NoSuchModel):
    def __init__(self, model: str) -> None:
        super().__init__(model, f"The model {model!r} is not available now: its engine does not answer.")


# Per process: the answers in flight are this process's.
_states: dict[Endpoint, EngineState] = {}
_asking: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Endpoint, asyncio.Task[None]]]" = (
    weakref.WeakKeyDictionary()
)
# Which engines there are, and when that was read.
_configured: tuple[float, list[Endpoint]] = (-math.inf, [])


def forget_engines() -> None:
    """Read which engines there are at the next question (an engine changed in the admin)."""
    global _configured
    _configured = (-math.inf, [])


def forget() -> None:
    """Forget which engines there are and what each said (tests: another test's engines are gone)."""
    forget_engines()
    _states.clear()


async def _engines() -> list[Endpoint]:
    """The default engine, then VLLM_ENGINES', then the admin's enabled ones; read at most every TTL."""
    global _configured
    if time.monotonic() - _configured[0] < TTL:
        return _configured[1]
    # The caller's connection (a request's) back to the pool first: this read takes one of its own,
    # and requests that each held theirs while they waited here once held the whole pool, this read
    # waiting for them and they for it (chatsite/request_threads.py `give_back_connection`).
    await give_back_connection()
    try:
        added = await _enabled_engines()
    except DatabaseError:
        # The database is away for a moment: the engines read last time (none yet: the default and
        # VLLM_ENGINES') answer meanwhile, rather than every turn failing; read again after TTL.
        log.warning("Could not read the admin's engines; using those read before", exc_info=True)
        if _configured[1]:
            _configured = (time.monotonic(), _configured[1])
            return _configured[1]
        added = []
    found = [default_endpoint(), *configured_engines(), *added]
    # One name, one engine: the first so named.
    unique = list({endpoint.name: endpoint for endpoint in reversed(found)}.values())[::-1]
    _configured = (time.monotonic(), unique)
    return unique


def configured_engines() -> list[Endpoint]:
    """VLLM_ENGINES' engines; an entry that is not {"name", "base_url", "api_key"?} is left out (the
    system check `engine.E001` names it at start-up)."""
    return [endpoint for entry in settings.VLLM_ENGINES if (endpoint := _configured_engine(entry)) is not None]


def _configured_engine(entry: object) -> Endpoint | None:
    match entry:
        case {"name": str(name), "base_url": str(base_url), **rest} if (
            name and base_url.startswith(("http://", "https://")) and isinstance(key := rest.get("api_key", ""), str)
        ):
            return Endpoint(name, base_url.rstrip("/"), key)
    return None


def check_configured_engines(**kwargs: object) -> list[checks.CheckMessage]:
    """The system check of VLLM_ENGINES (registered in engine/apps.py)."""
    return [
        checks.Error(
            f"VLLM_ENGINES[{index}] is not an engine.",
            hint='Each one is {"name": "...", "base_url": "http(s)://.../v1", "api_key": "..."} (the key optional).',
            id="engine.E001",
        )
        for index, entry in enumerate(settings.VLLM_ENGINES)
        if _configured_engine(entry) is None
    ]


def _read_enabled_engines() -> list[Endpoint]:
    return [engine.endpoint for engine in Engine.objects.enabled()]


# On a thread of the pool, its connection closed after: not thread-sensitive, as a turn's context has
# no request thread, and asgiref's one shared thread would keep its connection open for ever (with
# PostgreSQL, out of the pool, and broken once the database restarts).
_enabled_engines = database_sync_to_async(_read_enabled_engines, thread_sensitive=False)


def _state(endpoint: Endpoint) -> EngineState:
    if (state := _states.get(endpoint)) is None:
        state = _states[endpoint] = EngineState(endpoint)
    return state


async def engines() -> list[EngineState]:
    """Every engine, each asked what it serves if what it said is older than TTL seconds."""
    states = [_state(endpoint) for endpoint in await _engines()]
    now = time.monotonic()
    if stale := [state for state in states if now - state.asked_at >= TTL]:
        await give_back_connection()  # an engine may take seconds to answer: no connection held meanwhile
        await asyncio.gather(*(_fresh(state) for state in stale))
    return states


async def _fresh(state: EngineState) -> None:
    # Shielded: a caller that is cancelled (its client left) does not cancel the others' question.
    asking = _asking.setdefault(asyncio.get_running_loop(), {})
    if (task := asking.get(state.endpoint)) is None or task.done():
        task = asking[state.endpoint] = asyncio.ensure_future(_ask(state))
    await asyncio.shield(task)


async def _ask(state: EngineState) -> None:
    listed = await vllm_client.list_models(state.endpoint)
    state.asked_at = time.monotonic()
    if isinstance(listed, Failed):
        state.up, state.detail = False, listed.message
    else:
        state.up, state.detail, state.models = True, "", listed


def mark_down(endpoint: Endpoint, why: str) -> None:
    """Leave the engine out until it answers /v1/models again, at the next question after TTL seconds."""
    state = _state(endpoint)
    state.up, state.detail, state.asked_at = False, why, time.monotonic()
    log.warning("Engine %s (%s) left out: %s", endpoint.name, endpoint.shown_url, why)


async def offered() -> list[Offered]:
    """Every model some engine lists, the default model first, then by name."""
    default = await vllm_client.served_model()
    by_name: dict[str, tuple[ServedModel, list[str], bool]] = {}
    for state in await engines():
        for served in state.models:
            model, names, available = by_name.get(served.id, (served, [], False))
            by_name[served.id] = (model, [*names, state.endpoint.name], available or state.up)
    if default.id and default.id in by_name:
        _, names, available = by_name[default.id]
        by_name[default.id] = (default, names, available)
    order = sorted(by_name, key=lambda name: (name != default.id, name))
    return [Offered(by_name[name][0], tuple(by_name[name][1]), by_name[name][2]) for name in order]


def known(model: str) -> ServedModel | None:
    """The model's card as an engine last listed it, without asking anyone (a form's bounds)."""
    return next((served for state in _states.values() if (served := state.serves(model))), None)


def known_models() -> list[ServedModel]:
    """Every model's card as its engine last listed it, without asking anyone."""
    return [served for state in _states.values() for served in state.models]


async def pick(model: str = "", *, leaving_out: Endpoint | None = None) -> Chosen:
    """The model to ask for (`model`, or the default one if empty) and the engine to ask: of those
    up that serve it, the one with the fewest answers in flight.

    Raises UnknownModel for a model no engine lists, ModelUnavailable for one whose engines are all
    down. The default model is never refused: while its engine is down, the answer goes to it and
    fails saying so, as it always has.
    """
    default = await vllm_client.served_model()
    wanted = model or default.id
    states = await engines()
    serving = [
        (state, served)
        for state in states
        if state.up and state.endpoint != leaving_out and (served := state.serves(wanted)) is not None
    ]
    if serving:
        # min() keeps the first of equals: the default engine, then the order of the settings.
        state, served = min(serving, key=lambda pair: pair[0].in_flight)
        return Chosen(default if wanted == default.id else served, state.endpoint)
    if leaving_out is None:
        # The default engine's models are never refused, named or not: while it is down, the answer
        # goes to it and fails saying so (503 on the APIs), rather than a "no such model" (404) for
        # a model the default engine listed a moment ago.
        if wanted == default.id:
            return Chosen(default, default_endpoint())
        for state in states:
            if state.endpoint != default_endpoint():
                continue
            if (served := state.serves(wanted)) is not None:
                return Chosen(served, state.endpoint)
            if not state.up and not state.models and not default.live:
                # Nor one it may serve without having said so: it has not answered since the site
                # started (vLLM still loading, or down), so that what it serves is not known. The
                # answer goes to it, and fails saying vLLM is down, or is answered once it is up;
                # a "no such model" would have held until it was asked again, TTL seconds later.
                return Chosen(replace(default, id=wanted), state.endpoint)
    if any(state.serves(wanted) for state in states) or leaving_out is not None:
        raise ModelUnavailable(wanted)
    raise UnknownModel(wanted)


async def check(model: str) -> None:
    """Raise NoSuchModel unless `model` (empty: the default) may be chosen now."""
    await pick(model)


async def stream_chat(
    messages: list[dict[str, str]], options: GenerationOptions, chosen: Chosen
) -> AsyncGenerator[Event, None]:
    """vllm_client.stream_chat of the chosen model, counted in flight on the engine that answers:
    of the model's replicas, the one with the fewest answers in flight now (chosen again here, with
    no await between choosing and counting, so that answers started together spread out). An answer
    that fails before its first token because its engine was not reached is asked once of another."""
    try:
        chosen = Chosen(chosen.model, (await pick(chosen.model.id)).endpoint)
    except NoSuchModel:
        pass  # gone since the turn began: asked where it was, to end with the engine's own words
    for attempt in (1, 2):
        state = _state(chosen.endpoint)
        state.in_flight += 1
        retry: Chosen | None = None
        try:
            started = False
            events = vllm_client.stream_chat(messages, options, model=chosen.model.id, endpoint=chosen.endpoint)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        started = True
                    elif isinstance(event, Failed) and event.unreachable and not started:
                        mark_down(chosen.endpoint, event.message)
                        if attempt == 1 and (retry := await _replica(chosen)) is not None:
                            break
                    yield event
        finally:
            state.in_flight -= 1
        if retry is None:
            return
        log.info("Answer asked again of %s, %s being unreachable", retry.endpoint.name, chosen.endpoint.name)
        chosen = retry


async def _replica(chosen: Chosen) -> Chosen | None:
    try:
        other = await pick(chosen.model.id, leaving_out=chosen.endpoint)
    except NoSuchModel:
        return None
    return Chosen(chosen.model, other.endpoint)
