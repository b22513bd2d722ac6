"""chat.file_views: the page's doors for files: upload one, download one, remove one not yet sent,
and the person's choice for a file too long for the model's context.

A file is reached only through its owner (chat/attachments.py), so another person's is a 404.
Downloads are always attachments, with the sniffed type and `nosniff`: an HTML or SVG file is
never shown inline by the site's origin, where its scripts would run as the person.
"""

import uuid

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import attachments
from chat.attachment_models import Attachment, FileChoice
from chat.models import Someone


def described(attachment: Attachment) -> dict[str, object]:
    """A file as every door describes it (the contract with the page, notes/files-contract.md)."""
    return {
        "id": str(attachment.pk),
        "name": attachment.name,
        "size": attachment.size,
        "kind": attachment.kind,
        "pages": attachment.pages,
        "chars": len(attachment.text),
    }


def _refused(refusal: attachments.FileRefused) -> JsonResponse:
    return JsonResponse({"error": refusal.message}, status=refusal.status)


@login_required
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    assert isinstance(request.user, User)  # login_required lets only someone signed in this far
    try:
        attachments.check_declared_size(_declared_size(request))
        upload = request.FILES.get("file")
        if upload is None:
            raise attachments.FileRefused(gettext("Choose a file to attach."), 400)
        with upload:
            attachment = attachments.take_in(request.user, upload)
    except attachments.FileRefused as refusal:
        return _refused(refusal)
    return JsonResponse(described(attachment), status=201)


@login_required
@require_http_methods(["GET", "DELETE"])
def file(request: HttpRequest, file_id: uuid.UUID) -> HttpResponseBase:
    if request.method == "DELETE":
        if not attachments.delete_unsent(request.user, file_id):
            raise Http404
        return HttpResponse(status=204)
    return download(request.user, file_id)


def download(user: Someone, file_id: uuid.UUID) -> FileResponse:
    """The file's bytes, to its owner only: as an attachment, with its sniffed type and nosniff."""
    attachment = Attachment.objects.owned_by(user).filter(pk=file_id).first()
    if attachment is None:
        raise Http404
    try:
        stored = attachment.path.open("rb")
    except FileNotFoundError:
        raise Http404 from None
    response = FileResponse(stored, as_attachment=True, filename=attachment.name, content_type=attachment.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    # Even opened directly, nothing in it runs: no scripts, no plugins, no frames, its own origin.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@login_required
@require_GET
def files_of_person(request: HttpRequest) -> JsonResponse:
    """The person's files not yet sent with a prompt (the page shows them as chips after a reload)."""
    unsent = Attachment.objects.owned_by(request.user).unsent().order_by("created_at")
    return JsonResponse({"files": [described(attachment) for attachment in unsent]})


@login_required
@require_POST
def choose_when_too_long(request: HttpRequest) -> JsonResponse:
    assert isinstance(request.user, User)
    choice = request.POST.get("when_too_long", "")
    if choice not in FileChoice.WhenTooLong.values:
        return JsonResponse({"error": gettext("Choose “cut” or “refuse”.")}, status=400)
    FileChoice.objects.update_or_create(person=request.user, defaults={"when_too_long": choice})
    return JsonResponse({"when_too_long": choice})


def _declared_size(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
