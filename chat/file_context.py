"""chat.file_context: a prompt's files in what the model reads, and fitted to its context honestly.

Each file's text goes before the typed prompt, between a header that names it and an end line:
the prompt's own files and those of the earlier prompts on its branch (chat/turn_storage.py), so
a follow-up question still reads the document it is about.
When the prompt with its files does not fit the model's context, the older turns are dropped
first, as for any prompt (chat/context.py); when even alone it does not fit, the person's choice
(FileChoice) decides: the prompt is refused before anything is sent, or each file is cut to its
share of the room left, whole pages first for a PDF, and the answer records what was used of each
(`Message.files_cut`), which its footer shows. Nothing is cut without saying so.

The room is measured with the counter the site already uses: vLLM's /tokenize when it answers,
else the UTF-8 byte count, which a byte-level BPE's token count never exceeds.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

from django.utils.translation import gettext

from chat.context import ContextTooLong, FittedContext, estimate_tokens, fit_context
from engine import vllm_client
from engine.endpoints import Endpoint

PAGE_BREAK = "\f"
# How many times a cut that the exact count still finds too long is made smaller, by SHRINK each time.
TRIES = 6
SHRINK = 0.8


@dataclass(frozen=True, slots=True)
class FileText:
    name: str
    text: str
    pages: int | None = None  # a PDF's: its text is its pages joined by PAGE_BREAK
    cut: str = ""  # what of it the model is given, when not all: told to the model too


class Cut(TypedDict, total=False):
    """What of one file an answer's prompt held: pages for a PDF, characters otherwise."""

    name: str
    used_pages: int
    pages: int
    used_chars: int
    chars: int


def block(file: FileText) -> str:
    text = file.text.replace(PAGE_BREAK, "\n\n")
    end = f"{file.name}; only {file.cut}" if file.cut else file.name
    return f"[File: {file.name}]\n{text}\n[End of file: {end}]"


def with_files(prompt: str, files: Sequence[FileText]) -> str:
    """The prompt as the model reads it: each file, then what the person typed."""
    return "\n\n".join([*(block(file) for file in files), prompt]) if files else prompt


def cut_note(cut: Cut) -> str:
    """The footer's words for one cut file, in the reader's language."""
    if "used_pages" in cut:
        return gettext("%(name)s: used pages 1–%(used)s of %(pages)s") % {  # noqa: RUF001
            "name": cut["name"],
            "used": cut["used_pages"],
            "pages": cut["pages"],
        }
    return gettext("%(name)s: used the first %(used)s of %(chars)s characters") % {
        "name": cut["name"],
        "used": f"{cut['used_chars']:,}",
        "chars": f"{cut['chars']:,}",
    }


def refusal(files: Sequence[FileText]) -> str:
    return gettext(
        "The attached files are too long for the model's context: %(names)s. Attach less, or choose in "
        "Settings to send the part that fits."
    ) % {"names": ", ".join(file.name for file in files)}


async def fit_with_files(
    *,
    system_prompt: str,
    earlier: list[dict[str, str]],
    prompt: str,
    files: Sequence[FileText],
    max_tokens: int,
    context_length: int,
    cut: bool,
    model: str | None = None,
    endpoint: Endpoint | None = None,
) -> tuple[FittedContext, list[Cut]]:
    """The messages to send, and what was cut of which file (empty when every file went whole).

    Raises ContextTooLong when the prompt does not fit and may not be cut (`cut` False), or
    cannot be made to fit even with its files cut to nothing.
    """

    async def fitted(files: Sequence[FileText]) -> FittedContext:
        return await fit_context(
            system_prompt=system_prompt,
            earlier=earlier,
            prompt=with_files(prompt, files),
            max_tokens=max_tokens,
            context_length=context_length,
            model=model,
            endpoint=endpoint,
        )

    try:
        return await fitted(files), []
    except ContextTooLong:
        if not files:
            raise
        if not cut:
            raise ContextTooLong(refusal(files)) from None
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    empty = [replace(file, text="") for file in files]
    bare = [*head, {"role": "user", "content": with_files(prompt, empty)}]
    fixed = await vllm_client.count_prompt_tokens(bare, model=model, endpoint=endpoint) or estimate_tokens(bare)
    room = context_length - max_tokens - fixed
    needs = [await _tokens(file.text, model, endpoint) for file in files]
    shares = _shares(room, needs)
    for _ in range(TRIES):
        if room <= 0:
            break
        made = [_cut(file, share, need) for file, share, need in zip(files, shares, needs, strict=True)]
        try:
            return await fitted([file for file, _ in made]), [cut for _, cut in made if cut is not None]
        except ContextTooLong:
            shares = [math.floor(share * SHRINK) for share in shares]
    raise ContextTooLong(refusal(files))


async def _tokens(text: str, model: str | None, endpoint: Endpoint | None) -> int:
    """The text's tokens: vLLM's count less the template's few, or its UTF-8 bytes."""
    if not text:
        return 0
    counted = await vllm_client.count_prompt_tokens([{"role": "user", "content": text}], model=model, endpoint=endpoint)
    return max(1, counted - estimate_tokens([{"role": "user", "content": ""}])) if counted else len(text.encode())


def _shares(room: int, needs: Sequence[int]) -> list[int]:
    """The room split between the files fairly: a file that needs less than an equal share takes
    what it needs, and what it leaves goes to the others (water-filling)."""
    shares = [0] * len(needs)
    left, waiting = max(room, 0), sorted(range(len(needs)), key=lambda i: needs[i])
    while waiting:
        equal = left // len(waiting)
        index = waiting.pop(0)
        shares[index] = min(needs[index], equal)
        left -= shares[index]
    return shares


def _cut(file: FileText, share: int, need: int) -> tuple[FileText, Cut | None]:
    """The file cut to about `share` tokens of its `need`: whole pages of a PDF while any fit."""
    if share >= need:
        return file, None
    chars = math.floor(len(file.text) * share / need) if need else 0
    if file.pages:
        pages = file.text.split(PAGE_BREAK)
        used, length = 0, 0
        while used < len(pages) and length + len(pages[used]) <= chars:
            length += len(pages[used]) + 1
            used += 1
        if used:
            kept = PAGE_BREAK.join(pages[:used])
            cut = f"pages 1-{used} of {file.pages}"
            return replace(file, text=kept, cut=cut), Cut(name=file.name, used_pages=used, pages=file.pages)
    cut = f"the first {chars} of {len(file.text)} characters"
    return replace(file, text=file.text[:chars], cut=cut), Cut(name=file.name, used_chars=chars, chars=len(file.text))
