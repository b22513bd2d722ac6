"""The temporary chat's page and its one route that answers (chat/temporary.py): nothing is saved."""

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from chat import sse, temporary
from chat.forms import PromptForm, SettingsForm
from chat.limits import TooManyAnswers
from chat.turn_views import _too_many
from chat.views import _refused
from engine import catalog
from engine.server import starter
from engine.vllm_client import GenerationOptions


class TemporaryForm(PromptForm, SettingsForm):
    """A prompt, the settings it goes with (each optional), and the earlier messages the page keeps."""

    history = forms.CharField(required=False, strip=False)
    field_order = ["prompt"]

    def clean_history(self) -> list[dict[str, str]]:
        return temporary.clean_history(self.cleaned_data["history"])


@login_required
@require_GET
def page(request: HttpRequest) -> HttpResponse:
    # No length on the box: the browser would silently cut a long paste; the site says what is too long.
    return render(request, "chat/temporary.html")


def _options(data: dict[str, object], chosen: catalog.Chosen) -> GenerationOptions:
    def given[T](name: str, default: T) -> T:
        value = data.get(name)
        return default if value is None else value  # type: ignore[return-value]

    # The starter model is asked greedily, as on the chat page: sampled, its answers derail.
    temperature = starter.TEMPERATURE if chosen.model.is_starter else settings.CHAT_DEFAULT_TEMPERATURE
    return GenerationOptions(
        temperature=given("temperature", temperature),
        max_tokens=given("max_tokens", settings.CHAT_DEFAULT_MAX_TOKENS),
        top_p=given("top_p", settings.CHAT_DEFAULT_TOP_P),
    )


@login_required
@require_POST
async def send(request: HttpRequest) -> HttpResponseBase:
    """The answer to a temporary chat's prompt, streamed as the chat page's answers are; or a
    refusal (400, 429) as JSON, before anything streams."""
    user = await request.auser()
    assert isinstance(user, User)  # login_required lets no one else this far
    form = TemporaryForm(request.POST, model=request.POST.get("model", ""))
    if not form.is_valid():
        return _refused(form)
    data = form.cleaned_data
    try:
        chosen = await catalog.pick(data.get("model") or "")
    except catalog.NoSuchModel as exc:
        return JsonResponse({"error": exc.message}, status=400)
    try:
        reserved = await temporary.reserve(user.pk)
    except TooManyAnswers as exc:
        return _too_many(exc)
    events = temporary.answer(
        history=data["history"],
        prompt=data["prompt"],
        system_prompt=data.get("system_prompt") or "",
        options=_options(data, chosen),
        chosen=chosen,
        reserved=reserved,
    )
    return sse.response(temporary.Stream(events, reserved))
