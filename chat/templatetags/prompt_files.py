"""A prompt's files in the thread, and what an answer's prompt held of them (chat/file_context.py),
read only where the page read them already."""

from django import template

from chat import attachments
from chat.attachment_models import Attachment
from chat.file_context import Cut, cut_note
from chat.models import Message

register = template.Library()


@register.filter
def prompt_files(prompt: Message) -> list[Attachment]:
    return attachments.files_read_with(prompt)


@register.filter
def files_cut_notes(answer: Message) -> list[str]:
    """ "report.pdf: used pages 1-12 of 40", one for each file the answer's prompt held only part of."""
    cuts: list[Cut] = answer.files_cut or []
    return [cut_note(cut) for cut in cuts]
