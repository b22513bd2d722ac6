"""The page's views that pin, file and archive conversations, and keep the person's folders.

Thin: chat/folders.py has the rules. A conversation or folder is reached through
chat/ownership.py or `folders.folder_or_404`: another person's is a 404. After a change made by
htmx, the sidebar's pinned list, folders and list are sent again, swapped in out of band.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_POST

from chat import folders, ownership, sidebar
from chat.forms import row_id
from chat.models import Conversation
from chat.views import HtmxHttpRequest, _listed, open_conversation_pk


def _sidebar(request: HtmxHttpRequest, back: str = "chat:index", **kwargs: int) -> HttpResponse:
    if not request.htmx:
        return redirect(reverse(back, kwargs=kwargs))
    context = {
        **folders.shelves_context(request.user),
        **_listed(sidebar.first_page(request.user)),
        "open_pk": open_conversation_pk(request),
    }
    return render(request, "chat/shelves.html#sidebar-changed", context)


def _refused(refusal: folders.Refused) -> JsonResponse:
    # As the page's other forms: chat.js shows `error` beside the form that was sent.
    return JsonResponse({"error": str(refusal)}, status=400)


def _back_to(conversation: Conversation, request: HtmxHttpRequest) -> HttpResponse:
    return _sidebar(request, "chat:conversation", pk=conversation.pk)


@login_required
@require_POST
def pin(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = ownership.conversation_or_404(request.user, pk)
    try:
        folders.pin(conversation, request.POST.get("pinned") != "false")
    except folders.Refused as exc:
        return _refused(exc)
    return _back_to(conversation, request)


@login_required
@require_POST
def move(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Into the folder `folder` names, or, with an empty one, out of any folder."""
    conversation = ownership.conversation_or_404(request.user, pk)
    chosen = request.POST.get("folder", "")
    folder_pk = row_id(chosen)
    if chosen and folder_pk is None:
        return JsonResponse({"error": gettext("No such folder.")}, status=400)
    folders.move(conversation, folders.folder_or_404(request.user, folder_pk) if folder_pk else None)
    return _back_to(conversation, request)


@login_required
@require_POST
def archive(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    folders.archive(ownership.conversation_or_404(request.user, pk))
    return _sidebar(request)


@login_required
@require_POST
def restore(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    folders.restore(ownership.conversation_or_404(request.user, pk))
    # From the archive page: its row just goes (htmx), or the page is drawn again without it.
    return HttpResponse() if request.htmx else redirect("chat:archived")


@login_required
@require_GET
def archived(request: HtmxHttpRequest) -> HttpResponse:
    """The archived conversations, most recently archived first, a page at a time."""
    try:
        page = max(1, min(int(request.GET.get("page", "1")), 10_000))
    except ValueError:
        page = 1
    shown, more = folders.archived_page(request.user, page, sidebar.PAGE)
    context = {"archived": shown, "next_page": page + 1 if more else None, "page": page}
    return render(request, "chat/archive.html", context)


@login_required
@require_GET
def folder_list(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """A folder's conversations, a page at a time, as the folder is opened in the sidebar."""
    folder = folders.folder_or_404(request.user, pk)
    try:
        after = request.GET.get("after")
        listing = (
            sidebar.page_after(request.user, after, folder=folder)
            if after
            else sidebar.first_page(request.user, folder=folder)
        )
    except sidebar.BadPlace:
        return HttpResponse(status=400)
    context = {
        **_listed(listing),
        "folder": folder,
        "open_pk": open_conversation_pk(request),
        **folders.shelves_context(request.user),
    }
    return render(request, "chat/shelves.html#folder-page", context)


@login_required
@require_POST
def create_folder(request: HtmxHttpRequest) -> HttpResponse:
    try:
        folders.create_folder(ownership.signed_in(request), request.POST.get("name", ""))
    except folders.Refused as exc:
        return _refused(exc)
    return _sidebar(request)


@login_required
@require_POST
def rename_folder(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    folder = folders.folder_or_404(request.user, pk)
    try:
        folders.rename_folder(folder, request.POST.get("name", ""))
    except folders.Refused as exc:
        return _refused(exc)
    return _sidebar(request)


@login_required
@require_POST
def delete_folder(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The folder goes; its conversations go back to the list."""
    folders.folder_or_404(request.user, pk).delete()
    return _sidebar(request)
