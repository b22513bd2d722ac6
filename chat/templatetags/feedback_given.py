"""The feedback shown under an answer (chat/feedback.py), read only where the page read it already."""

from django import template

from chat.models import Feedback, Message

register = template.Library()


@register.filter
def feedback_given(answer: Message) -> Feedback | None:
    """The answer's feedback if the branch's page read it with the answer (chat/branches.py), else None.

    Never a query of its own: the footer is also rendered by async views (a sent prompt's new
    answer, which has none yet), where a query from the template would fail.
    """
    prefetched = getattr(answer, "_prefetched_objects_cache", {}).get("feedback")
    return prefetched[0] if prefetched else None
