"""chat.search_query: `Query.parse`, what a person typed as the terms every result must hold; `highlight`, `snippet`.

A "quoted phrase" is one term. Results' text comes out as `Part`s, never as markup: the page escapes
each one and marks the matches.
"""

import re
from dataclasses import dataclass
from typing import NamedTuple

from django.utils.translation import gettext

MAX_QUERY_CHARS = 200
MAX_TERMS = 8
MAX_RESULTS = 50
# The trigram tokenizer indexes runs of three characters: a shorter term is not in the index.
TRIGRAM = 3
SNIPPET_CHARS = 160
SNIPPET_LEAD = 50  # characters shown before the first match


class InvalidQuery(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Query:
    """What the person typed, as the terms every result must contain (a "quoted phrase" is one term)."""

    terms: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Query":
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQuery(gettext("Search for at most %(limit)s characters.") % {"limit": MAX_QUERY_CHARS})
        # NUL cannot be stored or sent to PostgreSQL, and no message holds one.
        text = text.replace("\x00", "")
        terms: list[str] = []
        for phrase, word in re.findall(r'"([^"]*)"|(\S+)', text):
            term = " ".join(phrase.split()) if phrase else word
            if term and term.casefold() not in {t.casefold() for t in terms}:
                terms.append(term)
        if len(terms) > MAX_TERMS:
            raise InvalidQuery(gettext("Search for at most %(limit)s words at once.") % {"limit": MAX_TERMS})
        return cls(tuple(terms))

    def __bool__(self) -> bool:
        return bool(self.terms)

    @property
    def indexed_terms(self) -> list[str]:
        return [term for term in self.terms if len(term) >= TRIGRAM]

    @property
    def short_terms(self) -> list[str]:
        return [term for term in self.terms if len(term) < TRIGRAM]


class Part(NamedTuple):
    """A piece of a title or snippet, and whether it is what was searched for.

    Text comes out as parts, never as markup: the page escapes each one and marks the matches, so a
    message that holds HTML is shown as text.
    """

    text: str
    match: bool


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- Titles and snippets with the matches marked --------------------------------------------------


def _pattern(terms: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    # Longest first, so that of two overlapping terms the longer is marked whole.
    return re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)


def highlight(text: str, terms: tuple[str, ...] | list[str]) -> list[Part]:
    """All of `text`, in parts, each occurrence of a term marked."""
    parts: list[Part] = []
    end = 0
    for found in _pattern(terms).finditer(text):
        if found.start() > end:
            parts.append(Part(text[end : found.start()], False))
        parts.append(Part(found.group(), True))
        end = found.end()
    if end < len(text):
        parts.append(Part(text[end:], False))
    return parts


def snippet(text: str, terms: tuple[str, ...] | list[str], width: int = SNIPPET_CHARS) -> list[Part]:
    """A line of `text` around its first match, with the matches marked and the cuts shown as "…"."""
    first = _pattern(terms).search(text)
    start = max(0, first.start() - SNIPPET_LEAD) if first else 0
    if start:
        # Begin at a word when there is one close by, rather than in the middle of one.
        space = text.find(" ", start, first.start() if first else start)
        start = space + 1 if space != -1 else start
    end = max(start + width, first.end() if first else 0)
    parts = highlight(text[start:end], terms)
    # One line: the snippet sits in a list of results.
    parts = [Part(re.sub(r"\s+", " ", part.text), part.match) for part in parts]
    if start:
        parts.insert(0, Part("…", False))
    if end < len(text):
        parts.append(Part("…", False))
    return parts
