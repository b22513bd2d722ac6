"""engine.vllm_client: `stream_chat` and `complete`, the chat completions asked of vLLM; the one door to vLLM above it.

Everything above it sees typed events (`TextDelta`, `Finished`, `Usage`, `Failed`: engine/vllm_events.py),
never SSE lines or vLLM's JSON. Every failure, whatever its shape on the wire, becomes one `Failed`
with a message written for the person reading the chat (engine/vllm_errors.py). The text in events
is always text a database can store (engine/sse_frames.py `_storable`). The other engine/vllm_* and
engine/served_model.py modules ask vLLM about itself; their public names are importable from here.
"""

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from django.conf import settings

from chatsite.request_threads import give_back_connection
from engine import http_client
from engine.endpoints import Endpoint, default_endpoint
from engine.served_model import SERVED_MODEL_TTL as SERVED_MODEL_TTL
from engine.served_model import ServedModel as ServedModel
from engine.served_model import assumed_model as assumed_model
from engine.served_model import context_length as context_length
from engine.served_model import doubt_served_model
from engine.served_model import forget_served_model as forget_served_model
from engine.served_model import get_json as get_json
from engine.served_model import known_model as known_model
from engine.served_model import served_model as served_model
from engine.sse_frames import _json, _sse_data, _storable
from engine.vllm_errors import _connect_failure, _error_text, _pool_full, _unreachable
from engine.vllm_errors import describe_http_error as describe_http_error
from engine.vllm_events import Event as Event
from engine.vllm_events import Failed as Failed
from engine.vllm_events import Finished as Finished
from engine.vllm_events import GenerationOptions as GenerationOptions
from engine.vllm_events import TextDelta as TextDelta
from engine.vllm_events import Usage as Usage
from engine.vllm_status import Health as Health
from engine.vllm_status import ServerLoad as ServerLoad
from engine.vllm_status import check_health as check_health
from engine.vllm_status import list_models as list_models
from engine.vllm_status import parse_metrics as parse_metrics
from engine.vllm_status import read_load as read_load
from engine.vllm_status import server_load as server_load

# A gateway's "the upstream is not there" (bad gateway, unavailable, timed out): nothing came from a
# model, so the answer may be asked of another replica.
GATEWAY_DOWN = frozenset({502, 503, 504})
# How long, after "[DONE]", the end of the chunked body may take to arrive before the connection
# is closed rather than kept for the next request (it comes with the frame, or just after).
END_WAIT = 1.0


async def stream_chat(
    messages: list[dict[str, str]],
    options: GenerationOptions,
    *,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> AsyncGenerator[Event, None]:
    """Stream one chat completion as events; the last event is `Usage`, `Finished` or `Failed`.

    `endpoint` is the server asked, by default VLLM_BASE_URL's; `model` is the served name to ask
    for, by default the one the default endpoint serves. Closing this generator
    (or cancelling the task iterating it) closes the HTTP connection, which is how vLLM learns to
    abort the request and free its slot. A `Failed` is `unreachable` when nothing came from a model.
    """
    endpoint = endpoint or default_endpoint()
    if model is None:
        model = (await served_model()).id
    body = {
        "model": model,
        "messages": messages,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "top_p": options.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    finished = delivered = False
    noted = http_client.Noted()
    try:
        async with _completion(endpoint, body, "text/event-stream", noted, streamed=True) as response:
            if response.status != 200:
                content = await _read_body(response)
                if response.status == 404 and endpoint == default_endpoint():
                    doubt_served_model()  # vLLM may have been restarted with another model: ask again
                down = response.status in GATEWAY_DOWN
                described = describe_http_error(response.status, content, model, key_sent=bool(endpoint.api_key))
                yield Failed(described, unreachable=down)
                return
            # Not aiohttp's sock_read, which sets a timer per frame: hundreds per answer.
            with http_client.Silence(response, settings.VLLM_READ_TIMEOUT) as silence:
                async for data in _sse_data(silence.chunks()):
                    if data == b"[DONE]":
                        await _read_to_the_end(response)
                        if not finished:
                            yield Failed("The model server ended the answer without saying why.")
                        return
                    try:
                        chunk = _json(data)
                    except ValueError:
                        yield Failed("The model server sent a frame that is not JSON.")
                        return
                    if "error" in chunk:
                        yield Failed(f"The model server failed while answering: {_error_text(chunk)}")
                        return
                    for choice in chunk.get("choices") or ():
                        if (text := (choice.get("delta") or {}).get("content")) and isinstance(text, str):
                            delivered = True
                            yield TextDelta(_storable(text))
                        if reason := choice.get("finish_reason"):
                            finished = True
                            yield Finished(reason)
                    if usage := chunk.get("usage"):
                        yield Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            if not finished:
                yield Failed(
                    "The connection to the model server closed before the answer was complete.",
                    unreachable=not delivered,
                )
    except aiohttp.ConnectionTimeoutError:
        # Waiting for one of the site's connections, or for vLLM to accept one: a connect timeout
        # is a server that is not there, not a slow answer.
        yield Failed(_pool_full(), unreachable=False) if noted.queued else Failed(_unreachable(endpoint), True)
    except aiohttp.ClientConnectorError as exc:
        yield Failed(_connect_failure(exc, endpoint), unreachable=True)
    except aiohttp.SocketTimeoutError:
        if not finished:
            yield Failed(f"The model server did not answer within {settings.VLLM_READ_TIMEOUT:g} seconds.")
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        if not finished:
            yield Failed(
                "The connection to the model server was lost before the answer was complete.",
                unreachable=not delivered,
            )
    except aiohttp.ClientError as exc:
        yield Failed(f"Could not talk to the model server: {exc}", unreachable=not delivered)


@asynccontextmanager
async def _completion(
    endpoint: Endpoint, body: dict[str, Any], accept: str, noted: http_client.Noted, *, streamed: bool = False
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A chat completion request, its response once its head has arrived. When the block raises, is
    cancelled or its generator closed mid-response, the connection is hung up on (vLLM then stops
    generating); else it goes back to the pool if the response was read to its end.

    A `streamed` response's body has no read timeout here: its reader keeps one (http_client.Silence).
    Its head must come within VLLM_READ_TIMEOUT of the request's having a connection, or
    aiohttp.SocketTimeoutError, as for any other."""
    for attempt in (1, 2):
        try:
            async with asyncio.timeout(None) as head:
                if streamed:
                    noted.head_deadline, noted.head_wait = head, settings.VLLM_READ_TIMEOUT
                response = await http_client.request(
                    "POST",
                    endpoint,
                    "/chat/completions",
                    noted=noted,
                    json=body,
                    headers={"Accept": accept},
                    timeout=http_client.timeout(sock_read=not streamed),
                )
            break
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):
                raise
            await asyncio.sleep(0)  # as below
            raise aiohttp.SocketTimeoutError("Timeout on reading the response's head") from None
        except aiohttp.ClientError as exc:
            # aiohttp has closed the connection; one turn of the loop and its socket is closed too,
            # so vLLM hears of it now even if the caller blocks next (a worker shutting down).
            await asyncio.sleep(0)
            # A kept-alive connection that vLLM closed just as the request went out (its idle
            # timeout): once more on a new one. A new connection that breaks is the answer.
            retry = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not isinstance(
                exc, aiohttp.ClientConnectorError
            )
            if not retry or not noted.reused or attempt == 2:
                raise
            noted.reused = False
    try:
        yield response
    except BaseException:
        http_client.hang_up(response)
        raise
    response.release()


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """A streamed request's whole body (an error's), within VLLM_READ_TIMEOUT, or SocketTimeoutError."""
    try:
        async with asyncio.timeout(settings.VLLM_READ_TIMEOUT):
            return await response.read()
    except TimeoutError as exc:
        if isinstance(exc, aiohttp.ClientError):
            raise
        raise aiohttp.SocketTimeoutError("Timeout on reading data from socket") from None


async def _read_to_the_end(response: aiohttp.ClientResponse) -> None:
    """After "[DONE]" only the chunked body's end is left: read it, so that the connection can carry
    the next request (aiohttp closes one whose response was not read to its end)."""
    try:
        async with asyncio.timeout(END_WAIT):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass


async def count_prompt_tokens(
    messages: list[dict[str, str]], *, model: str | None = None, endpoint: Endpoint | None = None
) -> int | None:
    """The exact prompt length after the chat template, from vLLM's /tokenize; None if unknown."""
    if model is None:
        model = (await served_model()).id
    # vLLM may take seconds to count (up to the 10 s below), and fitting a conversation may ask
    # several times: the caller's connection (a request's, e.g. an API door checking that a prompt
    # fits before it saves anything) goes back to the pool meanwhile, as for every wait on an
    # engine (chatsite/request_threads.py `give_back_connection`).
    await give_back_connection()
    try:
        timeout = http_client.timeout(10.0)
        async with await http_client.request(
            "POST",
            endpoint or default_endpoint(),
            "/tokenize",
            beside_v1=True,
            json={"model": model, "messages": messages},
            timeout=timeout,
        ) as response:
            if response.status == 200:
                return int(json.loads(await response.read())["count"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        pass
    return None


async def complete(
    messages: list[dict[str, str]],
    options: GenerationOptions,
    *,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> str | Failed:
    """One short chat completion, not streamed: the whole text, or `Failed` saying why not.

    For the site's own small requests (naming a conversation), not for answers a person follows.
    """
    endpoint = endpoint or default_endpoint()
    body = {
        # The model vLLM says it serves, as for answers: VLLM_SERVED_MODEL_NAME may be left unset.
        "model": model or (await served_model()).id,
        "messages": messages,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
        "top_p": options.top_p,
    }
    noted = http_client.Noted()
    try:
        async with _completion(endpoint, body, "application/json", noted) as response:
            status, content = response.status, await response.read()
    except aiohttp.ConnectionTimeoutError:
        return Failed(_pool_full()) if noted.queued else Failed(_unreachable(endpoint), unreachable=True)
    except aiohttp.ClientConnectorError as exc:
        return Failed(_connect_failure(exc, endpoint), unreachable=True)
    except aiohttp.SocketTimeoutError:
        return Failed(f"The model server did not answer within {settings.VLLM_READ_TIMEOUT:g} seconds.")
    except aiohttp.ClientError as exc:
        return Failed(f"Could not talk to the model server: {exc}", unreachable=True)
    if status != 200:
        described = describe_http_error(status, content, key_sent=bool(endpoint.api_key))
        return Failed(described, unreachable=status in GATEWAY_DOWN)
    try:
        text = json.loads(content)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Failed("The model server sent an answer without text.")
    if not isinstance(text, str):
        return Failed("The model server sent an answer without text.")
    return _storable(text)
