"""The page's door to feedback on answers (chat/feedback.py): thumbs up or down, with a comment."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import feedback, ownership
from chat.models import Feedback
from chat.views import HtmxHttpRequest


@login_required
@require_POST
async def give(request: HtmxHttpRequest, pk: int, message_pk: int) -> HttpResponse:
    """Thumbs up or down on the person's answer, with the comment box's text; the box as saved."""
    person = await request.auser()
    answer = await ownership.aanswer_or_404(person, message_pk, conversation_pk=pk)
    form = feedback.FeedbackForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"error": form.first_error()}, status=400)
    given = await feedback.give(person, answer, form.cleaned_data["rating"], form.cleaned_data["comment"])
    if not request.htmx:
        return redirect("chat:conversation", pk)
    context = {"answer": answer, "feedback": given, "saved": True, "comment_max": Feedback.COMMENT_MAX}
    return render(request, "chat/feedback.html", context)
