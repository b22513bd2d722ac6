"""The presets page: a person's presets, and the shared ones, to make, change and delete.

Thin: chat/presets.py has the form and the rules. Another person's own preset is a 404; a shared
one is changed by staff only.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from chat import ownership, presets
from chat.models import Preset


@login_required
@require_http_methods(["GET", "POST"])
def preset_list(request: HttpRequest) -> HttpResponse:
    person = ownership.signed_in(request)
    form = presets.PresetForm(request.POST or None, user=person, instance=Preset(owner=person))
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("chat:presets")
    context = {"form": form, "presets": presets.seen_by(request.user)}
    return render(request, "chat/presets.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def change_preset(request: HttpRequest, pk: int) -> HttpResponse:
    preset = presets.changeable_or_404(request.user, pk)
    form = presets.PresetForm(request.POST or None, user=request.user, instance=preset)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("chat:presets")
    return render(request, "chat/preset.html", {"form": form, "preset": preset}, status=400 if form.errors else 200)


@login_required
@require_POST
def delete_preset(request: HttpRequest, pk: int) -> HttpResponse:
    presets.changeable_or_404(request.user, pk).delete()
    return redirect("chat:presets")
