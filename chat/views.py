"""chat.views: the chat page's views (pages, branches, settings, health); parse and check, call the domain, render.

Every conversation and answer is reached through chat/ownership.py, so another user's
conversation is a 404 on every URL.
The views that start, follow or stop a turn are chat/turn_views.py's.
"""

from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, replace_url
from django_htmx.middleware import HtmxDetails

from chat import branches, folders, ownership, presets, rules, sidebar, titles, turns
from chat.forms import PromptForm, RenameForm, SettingsForm, row_id
from chat.models import Conversation, FileChoice, Message, ModelChoice, Someone
from chat.signals import health_checked
from engine import catalog, vllm_client
from engine.served_model import ServedModel
from engine.server import starter


class HtmxHttpRequest(HttpRequest):
    # As django-htmx's example types it: its middleware gives every request `htmx`.
    htmx: HtmxDetails


def _listed(listing: sidebar.Listing) -> dict[str, Any]:
    """The sidebar's list: a page of it, and where the next one starts (chat/sidebar.py)."""
    return {"conversations": listing.conversations, "sidebar_next": listing.next_place}


def _settings_panel(
    conversation: Conversation | None, model: str = "", answering: ServedModel | None = None
) -> dict[str, Any]:
    """What the settings panel shows: the conversation's settings, within the bounds the server checks
    (the context length is the chosen model's, as its engine last listed it); for a new chat, the
    defaults of the model `answering` it."""
    model = conversation.model if conversation else model
    return {
        "defaults": {
            "system_prompt": conversation.system_prompt if conversation else "",
            "temperature": conversation.temperature if conversation else _default_temperature(answering),
            "top_p": conversation.top_p if conversation else settings.CHAT_DEFAULT_TOP_P,
            "max_tokens": conversation.max_tokens if conversation else settings.CHAT_DEFAULT_MAX_TOKENS,
        },
        "bounds": {"temperature": rules.TEMPERATURE, "top_p": rules.TOP_P, "max_tokens": rules.max_tokens(model)},
        "max_prompt_chars": settings.CHAT_MAX_PROMPT_CHARS,
    }


def _branch(branch: branches.Branch) -> dict[str, Any]:
    """The thread: the branch shown, and its last message, which the next prompt follows."""
    return {"branch": branch, "tip": branch[-1][0].pk if branch else None}


def _shown(page: branches.Page) -> dict[str, Any]:
    """The thread: the end of the branch shown, and, above it, where the earlier messages are asked for."""
    return {**_branch(page.messages), "earlier": page.earlier}


async def _models(chosen: str) -> dict[str, Any]:
    """The picker's models, and the one that will answer (`chosen`, or the default model)."""
    offers = await catalog.offered()
    default = await vllm_client.served_model()
    chosen = chosen or default.id
    offer = next((offer for offer in offers if offer.model.id == chosen), None)
    return {"model": offer.model if offer else default, "models": offers, "chosen_model": chosen, "chosen_offer": offer}


def _last_choice(user: Someone) -> str:
    """The model the person last chose, for a new chat: if it is still offered."""
    return ModelChoice.objects.filter(person=user.pk).values_list("model", flat=True).first() or ""


def _page(request: HttpRequest, conversation: Conversation | None, *, through: int | None = None) -> HttpResponse:
    # The page names the model that will answer, and offers the others.
    # A new chat picked with a preset (`?preset=`) starts with its settings (chat/presets.py).
    preset = {} if conversation else presets.new_chat_panel(request.user, request.GET.get("preset", ""))
    chosen = conversation.model if conversation else (preset.get("preset_model") or _last_choice(request.user))
    models = async_to_sync(_models)(chosen)
    if conversation is None and chosen and not (models["chosen_offer"] and models["chosen_offer"].available):
        models = async_to_sync(_models)("")  # the last choice is gone: a new chat starts with the default
    return render(
        request,
        "chat/page.html",
        {
            **_listed(sidebar.first_page(request.user)),
            "conversation": conversation,
            "open_pk": conversation.pk if conversation else None,
            **(_shown(branches.shown_page(conversation, through=through)) if conversation else _branch([])),
            **_settings_panel(conversation, models["chosen_model"], models["model"]),
            **models,
            **folders.shelves_context(request.user),
            **preset,
            # The person's choice for a file too long for the model's context (chat/file_context.py).
            "when_too_long": _when_file_too_long(request.user),
        },
    )


def _when_file_too_long(user: Someone) -> str:
    choices = FileChoice.objects.filter(person_id=user.pk).values_list("when_too_long", flat=True)
    return choices.first() or FileChoice.WhenTooLong.CUT


def _default_temperature(answering: ServedModel | None) -> float:
    # The starter model is asked greedily: sampled, its answers derail (engine/server/starter.py).
    greedy = (answering or vllm_client.known_model()).is_starter
    return starter.TEMPERATURE if greedy else settings.CHAT_DEFAULT_TEMPERATURE


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request, None)


@login_required
@require_GET
def conversation(request: HttpRequest, pk: int) -> HttpResponse:
    # `?message=` opens the conversation on the branch that holds that message (a search result).
    # The page then holds at least the branch from that message down, so that it is on the page.
    through = row_id(request.GET.get("message", ""))
    return _page(request, ownership.conversation_or_404(request.user, pk), through=through)


@login_required
@require_GET
def older(request: HttpRequest, pk: int) -> HttpResponse:
    """The messages above `?before=` on its branch, a page of them: the reader has scrolled up to
    the top of the thread (paging.js puts them there)."""
    conversation = ownership.conversation_or_404(request.user, pk)
    before = row_id(request.GET.get("before", ""))
    if before is None:
        return JsonResponse({"error": "`before` must be the id of a message."}, status=400)
    page = branches.page_before(conversation.pk, before)
    if page is None:
        raise Http404("No such message in this conversation.")
    return render(request, "chat/page.html#older-page", {"conversation": conversation, **_shown(page)})


@login_required
@require_GET
def conversation_list(request: HtmxHttpRequest) -> HttpResponse:
    """The next page of the sidebar's list, as its last item scrolls into view."""
    try:
        listing = sidebar.page_after(request.user, request.GET.get("after", ""))
    except sidebar.BadPlace:
        return JsonResponse({"error": "`after` is not a place in the list."}, status=400)
    context = {**_listed(listing), "open_pk": open_conversation_pk(request)}
    return render(request, "chat/page.html#sidebar-page", context)


def _refused(form: PromptForm | SettingsForm) -> JsonResponse:
    # Nothing is saved: not the prompt, not a new conversation, not a setting.
    return JsonResponse({"error": form.first_error(), "fields": form.errors.get_json_data()}, status=400)


def _no_such_model(refusal: catalog.NoSuchModel) -> JsonResponse:
    return JsonResponse({"error": refusal.message, "fields": {"model": [{"message": refusal.message}]}}, status=400)


def _remember_choice(user: Someone, model: str) -> None:
    ModelChoice.objects.update_or_create(person_id=user.pk, defaults={"model": model})


async def _signed_in(request: HtmxHttpRequest) -> User:
    """The person who sent the request, in a view that login_required lets no one else reach."""
    user = await request.auser()
    assert isinstance(user, User)
    return user


async def _new_branch(
    request: HtmxHttpRequest, conversation: Conversation, user: User, *, through: int | None = None
) -> HttpResponse:
    """The thread, now showing another branch, and the list of conversations (this one may have moved up).
    With `through` (the version switched to), the thread holds the branch from that message down:
    the page scrolls to it."""
    if not request.htmx:
        return redirect(conversation_url(conversation))
    await conversation.arefresh_from_db(fields=["branch_tip"])
    context = {
        "conversation": conversation,
        **_shown(await branches.ashown_page(conversation, through=through)),
        **_listed(await sidebar.afirst_page(user)),
        "open_pk": conversation.pk,
    }
    # The page's address no longer needs to say which branch to show (a search result's did).
    return replace_url(render(request, "chat/page.html#branch-shown", context), conversation_url(conversation))


@login_required
@require_POST
async def show(request: HtmxHttpRequest, pk: int, message_pk: int) -> HttpResponse:
    """Show the branch through this version of a message (the arrows beside it)."""
    user = await _signed_in(request)
    conversation = await ownership.aconversation_or_404(user, pk)
    await branches.show(await ownership.amessage_or_404(user, message_pk, conversation_pk=pk))
    return await _new_branch(request, conversation, user, through=message_pk)


@login_required
@require_POST
def change_settings(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = ownership.conversation_or_404(request.user, pk)
    form = SettingsForm(request.POST, model=request.POST.get("model") or conversation.model)
    if not form.is_valid():
        return _refused(form)
    if (model := form.cleaned_data.get("model")) is not None:
        try:
            async_to_sync(catalog.check)(model)
        except catalog.NoSuchModel as exc:
            return _no_such_model(exc)
        _remember_choice(request.user, model)
    form.apply_to(conversation)
    # Only these: a whole save could write back a branch another tab has just switched.
    conversation.save(update_fields=[*Conversation.SETTINGS])
    if not request.htmx:
        return redirect(conversation_url(conversation))
    return render(request, "chat/page.html#settings-saved", _settings_panel(conversation))


@login_required
@require_GET
def answer_footer(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    """An answer's figures and actions as stored, for the page to show once the answer has ended."""
    answer = get_object_or_404(Message.objects.answers_of(request.user), pk=message_pk, conversation=pk)
    versions = branches.Tree.of(pk).versions_of(answer.pk)
    return render(request, "chat/page.html#answer-footer", {"message": answer, "versions": versions})


@login_required
@require_GET
async def title(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The conversation's sidebar item, once the model has named it (or has failed to)."""
    conversation = await ownership.aconversation_or_404(await request.auser(), pk)
    await titles.wait_for_name(conversation.pk)
    await conversation.arefresh_from_db(fields=["title"])
    context = {"item": conversation, "open_pk": open_conversation_pk(request)}
    return render(request, "chat/page.html#sidebar-item", context)


@login_required
@require_POST
def rename(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    conversation = ownership.conversation_or_404(request.user, pk)
    form = RenameForm(request.POST, instance=conversation)
    if not form.is_valid():
        return JsonResponse({"error": form.errors["title"][0]}, status=400)
    form.save()
    if request.htmx:
        context = {"item": conversation, "open_pk": open_conversation_pk(request)}
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
    if open_conversation_pk(request) == pk:
        return HttpResponseClientRedirect(reverse("chat:index"))
    return HttpResponse()  # the page just drops it from the list


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    # Open to monitors; only a signed-in person is told where vLLM is and what it serves.
    health = await vllm_client.check_health()
    await health_checked.asend(sender=None, health=health)  # the operator's view draws the recent ones
    report = {"site": "ok", "vllm": "ok" if health.ok else "unavailable"}
    if (await request.auser()).is_authenticated:
        report["detail"] = health.detail
        if health.ok:
            report["model"] = vllm_client.known_model().display_name
    return JsonResponse(report, status=200 if health.ok else 503)


def open_conversation_pk(request: HtmxHttpRequest) -> int | None:
    """The conversation on the person's screen when htmx made the request, if any."""
    try:
        # django-htmx splits the HX-Current-URL header, which a client may send as anything.
        current = request.htmx.current_url_abs_path if request.htmx else None
        match = resolve(urlsplit(current).path) if current else None
    except (ValueError, Resolver404):
        return None
    return match.kwargs["pk"] if match is not None and match.view_name == "chat:conversation" else None


def conversation_url(conversation: Conversation) -> str:
    return reverse("chat:conversation", args=[conversation.pk])
