"""engine.vllm_errors: `describe_http_error` and kin, vLLM's failures in words for the person reading the chat.

vLLM's error bodies come in two shapes ({"error": {...}} and an older flat one), and the same
limit (the model's context) is reported three ways depending on vLLM's version and what overflowed.
"""

import json
import re
from typing import Any

import aiohttp
from django.conf import settings

from engine.endpoints import Endpoint, default_endpoint
from engine.served_model import context_length, known_model
from engine.sse_frames import _storable


def _pool_full() -> str:
    # Not vLLM's doing: every connection the site may open to it is carrying an answer.
    return (
        f"The site is already streaming {settings.VLLM_MAX_CONNECTIONS} answers from the model server, "
        "its most at once. Try again in a moment."
    )


def _unreachable(endpoint: Endpoint) -> str:
    if endpoint != default_endpoint():
        return f"The model server is not reachable at {endpoint.shown_url}."
    return (
        f"The model server is not reachable at {endpoint.shown_url}. "
        "Start it with `python manage.py runvllm` (or check VLLM_BASE_URL)."
    )


def _connect_failure(exc: Exception, endpoint: Endpoint) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"The model server at {endpoint.shown_url} has a TLS certificate the site does not trust "
            f"({exc.certificate_error}). Set VLLM_CA_FILE to the certificate of the CA that signed it."
        )
    return _unreachable(endpoint)


def _error_text(body: Any) -> str:
    """vLLM's message from either error shape: {"error": {...}} or the older flat body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return _storable(str(inner["message"]))
        if isinstance(inner, str):
            return _storable(inner)
        if body.get("message"):
            return _storable(str(body["message"]))
    return "no details given"


def _error_param(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("param")
    return None


def describe_http_error(status: int, content: bytes, model: str | None = None, *, key_sent: bool = False) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        body = _storable(content.decode(errors="replace").strip()[:300]) or None
    text = _error_text(body) if isinstance(body, dict) else (body or "no details given")
    param = _error_param(body)
    if status == 400 and param == "max_tokens" and "maximum context length" in text:
        # vLLM >= 0.6: the prompt fits, but not with room for max_tokens more.
        limit = _number_after(r"maximum context length is (\d+)", text) or context_length()
        asked = _number_after(r"'max_tokens' is too large: (\d+)", text)
        answer = f"a {asked}-token answer" if asked else "the answer asked for"
        return (
            f"This conversation and {answer} do not fit the model's {limit}-token context. "
            "Ask for fewer tokens or start a new conversation."
        )
    if status == 400 and (param == "input_tokens" or "maximum context length" in text):
        limit = _number_after(r"maximum context length is (\d+)", text) or context_length()
        return (
            f"This conversation is too long for the model's {limit}-token context. "
            "Start a new conversation or shorten the message."
        )
    if status == 400 and param == "max_tokens":
        limit = _number_after(r"max_model_len=(\d+)", text) or context_length()
        return f"Max tokens is larger than the model's {limit}-token context allows. Ask for fewer tokens."
    if status == 404 and (param == "model" or "does not exist" in text):
        named = model if model is not None else known_model().id
        return f"The model server does not serve a model named {named!r} ({text}). Check VLLM_SERVED_MODEL_NAME."
    if status in (401, 403):
        # vLLM's --api-key answers 401 {"error": "Unauthorized"}; a gateway may say 403.
        if key_sent:
            return f"The model server refused the site's API key ({status}: {text}). Check VLLM_API_KEY."
        return f"The model server wants an API key ({status}: {text}). Set VLLM_API_KEY to the key it was started with."
    if status >= 500:
        return f"The model server failed ({status}): {text}"
    return f"The model server refused the request ({status}): {text}"


def _number_after(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None
