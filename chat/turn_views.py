"""chat.turn_views: the chat page's views that start, follow or stop a turn (send, edit, regenerate, stream, stop).

Async: the turn runs on the server's event loop (chat/turns.py). Every conversation and answer is
reached through chat/ownership.py, so another user's conversation is a 404 on every URL.
"""

from contextlib import suppress

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from chat import attachments, branches, ownership, sidebar, sse, turns
from chat.forms import PromptForm, SendForm
from chat.limits import TooManyAnswers
from chat.models import Conversation, Message
from chat.views import (
    HtmxHttpRequest,
    _branch,
    _last_choice,
    _listed,
    _new_branch,
    _no_such_model,
    _refused,
    _remember_choice,
    _settings_panel,
    _signed_in,
    conversation_url,
)
from engine import catalog


def _too_many(refusal: TooManyAnswers) -> JsonResponse:
    # Shown where a refused prompt's message is; the prompt stays in the box to send again.
    return JsonResponse({"error": refusal.message}, status=429, headers={"Retry-After": str(refusal.retry_after)})


@login_required
@require_POST
async def send(request: HtmxHttpRequest, pk: int | None = None) -> HttpResponse:
    user = await _signed_in(request)
    conversation = await ownership.aconversation_or_404(user, pk) if pk is not None else Conversation(owner=user)
    if pk is None and "model" not in request.POST:
        # A new chat takes the person's last choice while it is there (the picker sends its own).
        last = await sync_to_async(_last_choice)(user)
        with suppress(catalog.NoSuchModel):
            await catalog.check(last)
            conversation.model = last
    form = SendForm(request.POST, model=request.POST.get("model") or conversation.model)
    if not form.is_valid():
        return _refused(form)
    after = None
    if pk is not None and form.cleaned_data["parent"] is not None:
        after = await ownership.amessage_or_404(user, form.cleaned_data["parent"], conversation_pk=pk)
    try:
        # The chips' ids (chat/static/chat/attach.js): the person's own files, or the send is refused.
        files = await attachments.named_by(user, request.POST.getlist("files"))
    except attachments.FileRefused as refusal:
        return JsonResponse({"error": refusal.message}, status=refusal.status)
    form.apply_to(conversation)
    try:
        turn = await turns.start_turn(conversation, form.cleaned_data["prompt"], after=after, files=files)
    except TooManyAnswers as exc:
        return _too_many(exc)
    except catalog.NoSuchModel as exc:
        return _no_such_model(exc)
    if "model" in conversation.changed_settings:
        await sync_to_async(_remember_choice)(user, conversation.model)
    if not request.htmx:
        return redirect(conversation_url(conversation))  # a form sent without script
    # The page's htmx form: the new turn, and the parts of the page it changes (the `sent` partial).
    context = {
        "conversation": conversation,
        **_branch(await branches.turn_with_versions(conversation, turn)),
        # Read here: the template may not query the database from this async view.
        **_listed(await sidebar.afirst_page(user)),
        "open_pk": conversation.pk,
        **_settings_panel(conversation),
        # A first answer: once it is done, the page asks for the name the model gives the conversation.
        "naming_pk": conversation.pk if await _is_first_turn(conversation, turn) else None,
    }
    # Read last, with nothing awaited before the page is drawn: an answer that has already ended
    # is drawn whole, with no stream whose end would ask for the conversation's name, so the
    # sidebar item asks for it at once.
    context["answered"] = not turn.answer.is_streaming
    response = render(request, "chat/page.html#sent", context)
    if pk is None:
        push_url(response, conversation_url(conversation))
    return response


@login_required
@require_POST
async def regenerate(request: HtmxHttpRequest, pk: int, message_pk: int) -> HttpResponse:
    user = await _signed_in(request)
    conversation = await ownership.aconversation_or_404(user, pk)
    answer = await ownership.aanswer_or_404(user, message_pk, conversation_pk=pk)
    try:
        await turns.regenerate(conversation, answer)
    except turns.NoPrompt as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except TooManyAnswers as exc:
        return _too_many(exc)
    except catalog.NoSuchModel as exc:
        return _no_such_model(exc)
    return await _new_branch(request, conversation, user)


@login_required
@require_POST
async def edit(request: HtmxHttpRequest, pk: int, message_pk: int) -> HttpResponse:
    user = await _signed_in(request)
    conversation = await ownership.aconversation_or_404(user, pk)
    edited = await ownership.amessage_or_404(user, message_pk, conversation_pk=pk, role=Message.Role.USER)
    form = PromptForm(request.POST)
    if not form.is_valid():
        return _refused(form)
    try:
        await turns.edit_prompt(conversation, edited, form.cleaned_data["prompt"])
    except TooManyAnswers as exc:
        return _too_many(exc)
    except catalog.NoSuchModel as exc:
        return _no_such_model(exc)
    return await _new_branch(request, conversation, user)


async def _is_first_turn(conversation: Conversation, turn: turns.Turn) -> bool:
    if conversation.title_set_by_person:
        return False
    # A prompt that follows a message is not the first: only one at the root asks the database.
    if turn.prompt.parent_id is not None:
        return False
    return not await conversation.messages.filter(pk__lt=turn.prompt.pk).aexists()


@login_required
@require_GET
async def stream(request: HttpRequest, pk: int, message_pk: int) -> StreamingHttpResponse:
    answer = await ownership.aanswer_or_404(await request.auser(), message_pk, conversation_pk=pk)
    return sse.response(sse.turn_events(answer, since=sse.resumed_from(request)))


@login_required
@require_POST
async def stop(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    answer = await turns.stop_turn(
        await ownership.aanswer_or_404(await request.auser(), message_pk, conversation_pk=pk)
    )
    stopped: dict[str, object] = {"message_id": answer.pk, "status": answer.status, "content": answer.content}
    if answer.is_streaming:
        # Its worker could not be reached: the stop is recorded, and the answer ends at that
        # worker's next checkpoint (chat/turns.py `stop_turn`); the stream shows it.
        stopped["detail"] = gettext(turns.STOP_PENDING_TEXT)
    return JsonResponse(stopped)
