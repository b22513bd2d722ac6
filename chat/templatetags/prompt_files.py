"""A prompt's files in the thread, and what an answer's prompt held of them (chat/file_context.py),
read only where the page read them already."""

from django import template

from chat.attachment_models import Attachment
from chat.file_context import Cut, cut_note
from chat.models import Message

register = template.Library()


@register.filter
def prompt_files(prompt: Message) -> list[Attachment]:
    """The prompt's files if the branch's page read them with it (chat/branches.py), or as the turn
    that saved it kept them (chat/turns.py); never a query of its own: the thread is also drawn by
    async views, where a query from the template would fail."""
    prefetched = getattr(prompt, "_prefetched_objects_cache", {}).get("attachments")
    if prefetched is not None:
        return list(prefetched)
    kept: list[Attachment] = prompt.__dict__.get("kept_files", [])
    return kept


@register.filter
def files_cut_notes(answer: Message) -> list[str]:
    """ "report.pdf: used pages 1-12 of 40", one for each file the answer's prompt held only part of."""
    cuts: list[Cut] = answer.files_cut or []
    return [cut_note(cut) for cut in cuts]
