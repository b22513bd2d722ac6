"""The chat page's views: parse and check the request, call the domain, render.

Every conversation and answer is reached through chat/ownership.py, so another user's
conversation is a 404 on every URL.
The views that start, follow or stop a turn are async: the turn runs on the server's event loop.
"""

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url
from django_htmx.middleware import HtmxDetails

from chat import ownership, rules, sse, turns
from chat.forms import RenameForm, SendForm
from chat.models import Conversation, ConversationQuerySet
from engine import vllm_client

SIDEBAR_LENGTH = 200


class HtmxHttpRequest(HttpRequest):
    # As django-htmx's example types it: its middleware gives every request `htmx`.
    htmx: HtmxDetails


def _listed_conversations(user: Any) -> ConversationQuerySet:
    return Conversation.objects.owned_by(user).newest_first()[:SIDEBAR_LENGTH]


def _prompt_form(conversation: Conversation | None) -> dict[str, Any]:
    """What the prompt form shows: the conversation's settings, within the bounds the server checks."""
    return {
        "defaults": {
            "temperature": conversation.temperature if conversation else settings.CHAT_DEFAULT_TEMPERATURE,
            "top_p": conversation.top_p if conversation else settings.CHAT_DEFAULT_TOP_P,
            "max_tokens": conversation.max_tokens if conversation else settings.CHAT_DEFAULT_MAX_TOKENS,
        },
        "bounds": {"temperature": rules.TEMPERATURE, "top_p": rules.TOP_P, "max_tokens": rules.max_tokens()},
    }


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    return render(
        request,
        "chat/page.html",
        {
            "conversations": _listed_conversations(request.user),
            "conversation": conversation,
            "open_pk": conversation.pk if conversation else None,
            "messages": list(conversation.messages.in_order()) if conversation else [],
            **_prompt_form(conversation),
        },
    )


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request, None)


@login_required
@require_GET
def conversation(request: HttpRequest, pk: int) -> HttpResponse:
    return _page(request, ownership.conversation_or_404(request.user, pk))


@login_required
@require_POST
async def send(request: HtmxHttpRequest, pk: int | None = None) -> HttpResponse:
    user = await request.auser()
    conversation = await ownership.aconversation_or_404(user, pk) if pk is not None else Conversation(owner=user)
    form = SendForm(request.POST)
    if not form.is_valid():
        # Nothing is saved: not the prompt, not a new conversation.
        return JsonResponse({"error": form.first_error(), "fields": form.errors.get_json_data()}, status=400)
    form.apply_to(conversation)
    turn = await turns.start_turn(conversation, form.cleaned_data["prompt"])
    if not request.htmx:
        return redirect(conversation_url(conversation))  # a form sent without script
    # The page's htmx form: the new turn, and the parts of the page it changes (the `sent` partial).
    context = {
        "conversation": conversation,
        "messages": list(turn),
        # Read here: the template may not query the database from this async view.
        "conversations": [item async for item in _listed_conversations(user)],
        "open_pk": conversation.pk,
        **_prompt_form(conversation),
    }
    response = render(request, "chat/page.html#sent", context)
    if pk is None:
        push_url(response, conversation_url(conversation))
    return response


@login_required
@require_GET
async def stream(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    answer = await ownership.aanswer_or_404(await request.auser(), message_pk, conversation_pk=pk)
    return sse.response(sse.turn_events(answer, since=sse.resumed_from(request)))


@login_required
@require_POST
async def stop(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    answer = await turns.stop_turn(
        await ownership.aanswer_or_404(await request.auser(), message_pk, conversation_pk=pk)
    )
    return JsonResponse({"message_id": answer.pk, "status": answer.status, "content": answer.content})


@login_required
@require_POST
def rename(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = ownership.conversation_or_404(request.user, pk)
    form = RenameForm(request.POST, instance=conversation)
    if not form.is_valid():
        return JsonResponse({"error": form.errors["title"][0]}, status=400)
    form.save()
    if request.htmx:
        context = {"item": conversation, "open_pk": _open_conversation_pk(request)}
        return render(request, "chat/page.html#sidebar-item", context)
    return redirect(conversation_url(conversation))


@login_required
@require_POST
async def delete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = await ownership.aconversation_or_404(await request.auser(), pk)
    await turns.stop_turns_in(conversation)
    await conversation.adelete()
    if not request.htmx:
        return redirect("chat:index")
    if _open_conversation_pk(request) == pk:
        return HttpResponseClientRedirect(reverse("chat:index"))
    return HttpResponse()  # the page just drops it from the list


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    # Open to monitors; only a signed-in person is told where vLLM is and what it serves.
    health = await vllm_client.check_health()
    report = {"site": "ok", "vllm": "ok" if health.ok else "unavailable"}
    if (await request.auser()).is_authenticated:
        report["detail"] = health.detail
    return JsonResponse(report, status=200 if health.ok else 503)


def _open_conversation_pk(request: HtmxHttpRequest) -> int | None:
    """The conversation on the person's screen when htmx made the request, if any."""
    if not (request.htmx and request.htmx.current_url_abs_path):
        return None
    try:
        match = resolve(urlsplit(request.htmx.current_url_abs_path).path)
    except Resolver404:
        return None
    return match.kwargs["pk"] if match.view_name == "chat:conversation" else None


def conversation_url(conversation: Conversation) -> str:
    return reverse("chat:conversation", args=[conversation.pk])
