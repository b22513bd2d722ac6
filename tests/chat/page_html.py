"""The chat page's HTML as the tests read it: elements found by id, or form fields by name."""

from html.parser import HTMLParser


def elements(html: str) -> dict[str, dict[str, str | None]]:
    """The attributes of the first element with each id, and of the first field with each name.

    The element's tag is under "<tag>"; an element's own text is not kept.
    """
    found: dict[str, dict[str, str | None]] = {}

    class Reader(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            attributes = {"<tag>": tag, **dict(attrs)}
            for key in (attributes.get("id"), attributes.get("name")):
                if key:
                    found.setdefault(key, attributes)

    Reader().feed(html)
    return found
