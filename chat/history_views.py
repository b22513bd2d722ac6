"""The page's views over a person's history as a whole: search it, export it, import into it.

Thin, as the chat's own views: chat/search.py, chat/exports.py and chat/imports.py do the work.
A conversation is reached through chat/ownership.py: another person's is a 404.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_http_methods

from chat import exports, imports, ownership, search
from chat.models import Conversation
from chat.views import HtmxHttpRequest


@login_required
@require_GET
def search_history(request: HtmxHttpRequest) -> HttpResponse:
    text = request.GET.get("q", "")
    try:
        results, error = search.search(request.user, text), ""
    except search.InvalidQuery as exc:
        results, error = None, str(exc)
    # The sidebar's search box asks for the results alone; a visit without htmx gets a page.
    template = "chat/search.html#results" if request.htmx else "chat/search.html"
    return render(request, template, {"q": text, "results": results, "error": error}, status=400 if error else 200)


@login_required
@require_GET
def export_conversation(request: HttpRequest, pk: int, extension: str) -> HttpResponseBase:
    conversation = ownership.conversation_or_404(request.user, pk)
    if extension == "md":
        content, content_type = exports.as_markdown(conversation), "text/markdown; charset=utf-8"
    else:
        content, content_type = exports.as_json(Conversation.objects.filter(pk=pk)), "application/json"
    return exports.download(content, content_type, exports.filename(conversation, extension))


@login_required
@require_GET
def export_history(request: HttpRequest) -> HttpResponseBase:
    chunks = exports.json_chunks(Conversation.objects.owned_by(request.user))
    return exports.download(exports.in_thread(chunks), "application/json", exports.filename(None, "json"))


@login_required
@require_GET
def export_history_zip(request: HttpRequest) -> HttpResponseBase:
    """The JSON export with the prompts' files themselves (chat/exports.py `as_zip`)."""
    archive = exports.as_zip(Conversation.objects.owned_by(request.user))
    return exports.download(archive, "application/zip", exports.filename(None, "zip"))


@login_required
@require_http_methods(["GET", "POST"])
def import_history(request: HttpRequest) -> HttpResponse:
    context: dict[str, object] = {"limit_mb": settings.CHAT_IMPORT_MAX_BYTES // (1024 * 1024)}
    if request.method == "GET":
        return render(request, "chat/import.html", context)
    try:
        # Refused by its declared size before Django reads (and stores) the upload.
        if _declared_size(request) > imports.upload_limit():
            raise imports.ImportTooLarge(settings.CHAT_IMPORT_MAX_BYTES)
        upload = request.FILES.get("file")
        if upload is None:
            raise imports.ImportRefused([imports.Problem((), gettext("Choose a file to import."))])
        assert isinstance(request.user, User)  # login_required lets only someone signed in this far
        with upload:
            context["report"] = imports.import_file(request.user, upload)
    except imports.ImportRefused as refused:
        context["refused"] = refused
        return render(
            request, "chat/import.html", context, status=413 if isinstance(refused, imports.ImportTooLarge) else 400
        )
    return render(request, "chat/import.html", context)


def _declared_size(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
