"""The chat page's views: parse and check the request, call the domain, render.

Every conversation is reached through `Conversation.objects.owned_by(user)`, and every answer
through `Message.objects.answers_of(user)`, so another user's conversation is a 404 on every URL.
The views that start, follow or stop a turn are async: the turn runs on the server's event loop.
"""

from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import aget_object_or_404, get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from chat import sse, turns
from chat.forms import RenameForm, SendForm
from chat.models import Conversation, Message
from engine import vllm_client
from engine.server import starter

SIDEBAR_LENGTH = 200


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    conversations = Conversation.objects.owned_by(request.user).newest_first()[:SIDEBAR_LENGTH]
    model = async_to_sync(vllm_client.served_model)()  # the page names the model that will answer
    return render(
        request,
        "chat/page.html",
        {
            "conversations": conversations,
            "conversation": conversation,
            "open_pk": conversation.pk if conversation else None,
            "messages": list(conversation.messages.in_order()) if conversation else [],
            "defaults": {
                "temperature": conversation.temperature if conversation else _default_temperature(model),
                "max_tokens": conversation.max_tokens if conversation else settings.CHAT_DEFAULT_MAX_TOKENS,
            },
            "context_length": model.context_length,
            "model": model,
            "max_prompt_chars": settings.CHAT_MAX_PROMPT_CHARS,
        },
    )


def _default_temperature(model: vllm_client.ServedModel) -> float:
    return starter.TEMPERATURE if model.is_starter else settings.CHAT_DEFAULT_TEMPERATURE


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request, None)


@login_required
@require_GET
def conversation(request: HttpRequest, pk: int) -> HttpResponse:
    return _page(request, get_object_or_404(Conversation.objects.owned_by(request.user), pk=pk))


async def _owned_conversation(request: HttpRequest, pk: int) -> Conversation:
    return await aget_object_or_404(Conversation.objects.owned_by(await request.auser()), pk=pk)


async def _owned_answer(request: HttpRequest, pk: int, message_pk: int) -> Message:
    return await aget_object_or_404(Message.objects.answers_of(await request.auser()), pk=message_pk, conversation=pk)


@login_required
@require_POST
async def send(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    user = await request.auser()
    conversation = await _owned_conversation(request, pk) if pk else Conversation(owner=user)
    form = SendForm(request.POST)
    if not form.is_valid():
        # Nothing is saved: not the prompt, not a new conversation.
        return JsonResponse({"error": form.first_error(), "fields": form.errors.get_json_data()}, status=400)
    form.apply_to(conversation)
    prompt, answer = await turns.start_turn(conversation, form.cleaned_data["prompt"])
    response = render(request, "chat/page.html#turn", {"conversation": conversation, "messages": [prompt, answer]})
    response["X-Conversation-Id"] = str(conversation.pk)
    response["X-Message-Id"] = str(answer.pk)
    response["X-Conversation-Url"] = conversation_url(conversation)
    return response


@login_required
@require_GET
async def stream(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    answer = await _owned_answer(request, pk, message_pk)
    return sse.response(sse.turn_events(answer))


@login_required
@require_POST
async def stop(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    answer = await turns.stop_turn(await _owned_answer(request, pk, message_pk))
    return JsonResponse({"message_id": answer.pk, "status": answer.status, "content": answer.content})


@login_required
@require_POST
def rename(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_object_or_404(Conversation.objects.owned_by(request.user), pk=pk)
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
async def delete(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = await _owned_conversation(request, pk)
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
        if health.ok:
            report["model"] = vllm_client.known_model().display_name
    return JsonResponse(report, status=200 if health.ok else 503)


def _open_conversation_pk(request: HttpRequest) -> int | None:
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
