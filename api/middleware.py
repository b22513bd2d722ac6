"""The API's body limit: a body over API_MAX_BODY_BYTES is refused with 413 before any view parses it.

Only the API's doors (/api/ and the OpenAI-compatible /v1/) are limited; each gets the error in its
own shape (api/errors.py). The chat page's forms keep Django's own limits.
"""

from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from api import errors
from chat import attachments, imports

# The rest of Django's chain, as the server runs it: sync, or async (a coroutine function).
type SyncChain = Callable[[HttpRequest], HttpResponseBase]
type AsyncChain = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

# Its body is a file to import: it may be as large as an import (chat/imports.py).
IMPORT_PATH = "/api/import"
# Its body is a file for a prompt: it may be as large as one (chat/attachments.py).
FILES_PATH = "/api/files"
UPLOADS = (IMPORT_PATH, FILES_PATH)


@sync_and_async_middleware
def limit_api_body(get_response: SyncChain | AsyncChain) -> SyncChain | AsyncChain:
    # Under ASGI Django passes an async chain (a coroutine function), under WSGI a sync one.
    if iscoroutinefunction(get_response):
        async_response = cast(AsyncChain, get_response)

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            return _refusal(request) or await async_response(request)

        return middleware

    sync_response = cast(SyncChain, get_response)

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        return _refusal(request) or sync_response(request)

    return sync_middleware


def _refusal(request: HttpRequest) -> HttpResponse | None:
    if (door := errors.door_at(request.path_info)) is None:
        return None
    limit = settings.API_MAX_BODY_BYTES
    if request.path_info == IMPORT_PATH:
        limit = imports.upload_limit()
    elif request.path_info == FILES_PATH:
        limit = settings.CHAT_FILE_MAX_BYTES + attachments.MULTIPART_ENVELOPE
    if _size(request, limit) <= limit:
        return None
    message = f"The request body is too large: at most {limit} bytes are accepted."
    return door.response(errors.ApiError(413, message, code="request_too_large"))


def _size(request: HttpRequest, limit: int) -> float:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return declared  # refused without reading it
    if request.path_info in UPLOADS:
        # A file upload: Django spools it to disk as it parses it, where reading `body` would hold
        # it in memory (and refuse it over DATA_UPLOAD_MAX_MEMORY_SIZE); the import measures the file.
        return declared
    try:
        # A chunked body declares no length: measure what arrived.
        return len(request.body)
    except RequestDataTooBig:
        return float("inf")
