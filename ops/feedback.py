"""The operator's view of feedback on answers (chat/feedback.py), and its export, for staff only."""

from datetime import timedelta

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from chat import feedback

DAYS = 30


@staff_member_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """The share of thumbs up per model and per day over the last DAYS days, and the latest comments."""
    since = timezone.now() - timedelta(days=DAYS)
    context = {"rates": feedback.rates(since), "comments": feedback.latest_comments(), "days": DAYS}
    return render(request, "ops/feedback.html", context)


@staff_member_required
@require_GET
def export(request: HttpRequest) -> HttpResponse:
    """Every rating, with the answer and the prompt before it, as a JSON file to download."""
    response = JsonResponse(feedback.export(), safe=False, json_dumps_params={"ensure_ascii": False, "indent": 1})
    response["Content-Disposition"] = 'attachment; filename="feedback.json"'
    return response
