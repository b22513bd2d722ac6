"""A message's text in the page's HTML, to be read back by the page's script exactly as stored."""

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.filter
def as_stored(text: str) -> SafeString:
    """`text` escaped, with its carriage returns as character references.

    The browser's HTML parser turns every CR and CRLF of a page into LF before anything else
    reads it, but keeps a CR that a reference names. render.js renders an answer from the text
    the page carries, and Copy gives that text: without this, an answer read after a reload was
    not the one streamed (chunked and copied otherwise). NUL never reaches the page: the site
    stores U+FFFD for it.
    """
    return mark_safe(escape(text).replace("\r", "&#13;"))  # escaped just above
