"""Sharing a conversation by link, from the page (chat/sharing.py): share, revoke, read, continue.

The owner reaches a link only through their own conversations (chat/ownership.py), so another
person's conversation or link is a 404 on every URL here. A reader reaches a link by its token
alone; a revoked or unknown token is a 404, and a link for signed-in people sends a signed-out
reader to sign in, with nothing of the conversation in the answer.
"""

from django import forms
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from chat import ownership, sharing
from chat.models import SharedLink
from chat.views import HtmxHttpRequest


class ShareForm(forms.Form):
    audience = forms.ChoiceField(
        choices=SharedLink.Audience.choices,
        error_messages={"invalid_choice": gettext_lazy("Choose who may read the link.")},
    )


def link_url(request: HttpRequest, link: SharedLink) -> str:
    return request.build_absolute_uri(reverse("chat:shared", args=[link.token]))


@login_required
@require_POST
def share(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = ownership.conversation_or_404(request.user, pk)
    form = ShareForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"error": form.errors["audience"][0]}, status=400)
    link = sharing.share(conversation, SharedLink.Audience(form.cleaned_data["audience"]))
    if not request.htmx:
        return redirect("chat:shared-links")
    return render(request, "chat/sharing.html#shared", {"link": link, "url": link_url(request, link)})


@login_required
@require_POST
def unshare(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Revoke the conversation's link, from its menu; a conversation not shared stays so."""
    sharing.unshare(ownership.conversation_or_404(request.user, pk))
    if not request.htmx:
        return redirect("chat:conversation", pk)
    return render(request, "chat/sharing.html#unshared")


@login_required
@require_GET
def shared_links(request: HttpRequest) -> HttpResponse:
    """The account page's list of the person's links, each with its address and Revoke."""
    links = SharedLink.objects.owned_by(ownership.signed_in(request))
    links = links.only("pk", "token", "audience", "title", "shared_at")
    rows = [(link, link_url(request, link)) for link in links]
    return render(request, "chat/shared_links.html", {"rows": rows})


@login_required
@require_POST
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(SharedLink.objects.owned_by(ownership.signed_in(request)), pk=pk).delete()
    return redirect("chat:shared-links")


def _link_or_404(token: str) -> SharedLink:
    link = sharing.find(token)
    if link is None:
        raise Http404("No such link: it was revoked, or never made.")
    return link


# never_cache: a revoked link must not be read back from a cache or the back button.
@never_cache
@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    link = _link_or_404(token)
    if not sharing.may_read(link, request.user):
        return redirect_to_login(request.get_full_path())
    return render(request, "chat/shared.html", {"link": link})


@login_required
@require_POST
def continue_shared(request: HttpRequest, token: str) -> HttpResponse:
    """Copy the link's messages into a new conversation of the reader's, and open it."""
    link = _link_or_404(token)
    copy = sharing.continue_in(link, ownership.signed_in(request))
    return redirect("chat:conversation", copy.pk)
