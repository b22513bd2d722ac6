"""chat.file_reading: what kind of file a person sent, and its text; run as its own process.

chat/attachments.py runs this module as a script in a child process (`read_in_child`), never in the
site's: a PDF whose streams inflate to gigabytes, or a DOCX nested ten thousand deep, costs that
child its memory limit or its time, and the site kills it. So it imports no Django, and answers on
stdout with one JSON object: {"kind", "content_type", "text", "pages"} or {"refused": <reason>}.

The kind is decided by the bytes, not by the name: magic numbers (puremagic) for PDF and DOCX,
then, for text, its encoding (charset-normalizer) and its shape (JSON parses, HTML has tags, CSV
has a steady delimiter, code reads like code); the name's extension only breaks ties among text.
"""

import csv
import io
import json
import re
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

PAGE_BREAK = "\f"
# A DOCX is a zip: what its parts may inflate to, in all, before the child refuses to open it.
DOCX_MAX_INFLATED = 200 * 1024 * 1024
# The child's address space: a file that needs more is refused, not the site's memory taken.
CHILD_MEMORY = 1536 * 1024 * 1024

CODE_EXTENSIONS = {
    "py", "js", "ts", "tsx", "jsx", "java", "c", "h", "cc", "cpp", "hpp", "cs", "go", "rs", "rb", "php", "swift",
    "kt", "kts", "scala", "sh", "bash", "zsh", "ps1", "sql", "r", "m", "pl", "lua", "dart", "vue", "svelte", "css",
    "scss", "yaml", "yml", "toml", "ini", "cfg", "xml", "gradle", "makefile", "dockerfile", "el", "clj", "hs", "ex",
    "exs", "erl", "jl", "f90", "zig", "nim",
}  # fmt: skip
MARKDOWN_EXTENSIONS = {"md", "markdown", "mdown", "mkd"}
# Lines that only code starts or ends with; a text where enough of the lines do is code.
CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|package |func |fn |let |const |var |public |private |"
    r"static |return\b|if\s*\(|for\s*\(|while\s*\(|}|#!/|function\b|using |namespace |SELECT |CREATE |@\w+)"
    r"|[;{]\s*$",
)
MARKDOWN_LINE = re.compile(r"^(#{1,6} \S|[-*+] \S|\d+\. \S|```|> \S)|\[[^\]]+\]\([^)]+\)|\*\*\S")
HTML_START = re.compile(rb"^\s*(<!doctype html|<html\b|<head\b|<body\b)", re.IGNORECASE)


class Refused(Exception):
    """The file is not one the site reads; the reason is a code chat/attachments.py words for a person."""


def sniff_and_read(data: bytes, name: str, max_pages: int, max_chars: int) -> dict[str, object]:
    extension = name.rpartition(".")[2].lower() if "." in name else name.lower()
    if data[:1024].lstrip().startswith(b"%PDF-") or b"%PDF-" in data[:1024]:
        return _pdf(data, max_pages, max_chars)
    if data.startswith(b"PK\x03\x04"):
        return _docx(data, max_chars)
    text = _decoded(data)
    kind, content_type = _text_kind(text, data, extension)
    if kind == "html":
        text = _html_text(text)
    return {"kind": kind, "content_type": content_type, "text": _capped(text, max_chars), "pages": None}


def _capped(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        raise Refused("too_much_text")
    return text


def _decoded(data: bytes) -> str:
    if not data:
        raise Refused("empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        # A binary file decodes to something in some code page; charset-normalizer says how chaotic.
        if best is None or best.chaos > 0.2:
            raise Refused(_binary_reason(data)) from None
        text = str(best)
    if "\x00" in text or _controls(text) > 0.05 * len(text):
        raise Refused(_binary_reason(data))
    if not text.strip():
        raise Refused("empty")
    return text


def _controls(text: str) -> int:
    return sum(1 for c in text[:100_000] if c < " " and c not in "\t\n\r\f\v\x1b")


def _binary_reason(data: bytes) -> str:
    import puremagic

    try:
        mime = puremagic.from_string(data[:8192], mime=True)
    except puremagic.PureError:
        mime = ""
    return "image" if mime.startswith("image/") else "binary"


def _text_kind(text: str, data: bytes, extension: str) -> tuple[str, str]:
    stripped = text.lstrip()
    if stripped[:1] in "{[":
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            return "json", "application/json"
    if HTML_START.match(data[:4096].lstrip(b"\xef\xbb\xbf")) or extension in ("html", "htm", "xhtml"):
        return "html", "text/html"
    if stripped.startswith("<svg") or "<svg" in stripped[:512]:
        raise Refused("image")
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    if extension in CODE_EXTENSIONS or stripped.startswith("#!"):
        return "code", "text/plain"
    if extension in MARKDOWN_EXTENSIONS:
        return "markdown", "text/markdown"
    if extension in ("csv", "tsv") or _looks_like_csv(lines):
        return "csv", "text/csv"
    code = sum(1 for line in lines if CODE_LINE.search(line))
    markdown = sum(1 for line in lines if MARKDOWN_LINE.search(line))
    if lines and code >= max(3, 0.3 * len(lines)):
        return "code", "text/plain"
    if lines and markdown >= max(2, 0.15 * len(lines)):
        return "markdown", "text/markdown"
    return "text", "text/plain"


def _looks_like_csv(lines: list[str]) -> bool:
    if len(lines) < 2:
        return False
    sample = lines[:20]
    try:
        dialect = csv.Sniffer().sniff("\n".join(sample), delimiters=",;\t|")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(sample, dialect)}
    return len(widths) == 1 and widths.pop() >= 2


class _HtmlText(HTMLParser):
    """The text a browser would show, as lines: no script, style or markup."""

    HIDDEN = {"script", "style", "template", "noscript", "head", "svg", "iframe", "object"}
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    if not text:
        raise Refused("empty")
    return text


def _pdf(data: bytes, max_pages: int, max_chars: int) -> dict[str, object]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Refused("encrypted")
        count = len(reader.pages)
        if count > max_pages:
            raise Refused(f"too_many_pages:{count}")
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            text = page.extract_text().replace(PAGE_BREAK, "\n")
            total += len(text)
            if total > max_chars:
                raise Refused("too_much_text")
            pages.append(text)
    except (FileNotDecryptedError, PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Refused("encrypted" if isinstance(exc, FileNotDecryptedError) else "broken") from None
    if not any(page.strip() for page in pages):
        raise Refused("no_text_layer")
    return {"kind": "pdf", "content_type": "application/pdf", "text": PAGE_BREAK.join(pages), "pages": count}


def _docx(data: bytes, max_chars: int) -> dict[str, object]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            inflated = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise Refused("broken") from None
    if "word/document.xml" not in names:
        raise Refused("binary")  # a zip, an .xlsx, an .odt...: not a kind the site reads
    if inflated > DOCX_MAX_INFLATED:
        raise Refused("too_large_inside")
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    # Whatever python-docx or lxml raise for a damaged part, main() answers as "broken".
    document = docx.Document(io.BytesIO(data))
    lines: list[str] = []
    total = 0
    # The body in its order, tables' cells row by row (nested tables within their cell).
    pending: list[Paragraph | Table] = list(reversed(list(document.iter_inner_content())))
    while pending:
        block = pending.pop()
        if isinstance(block, Paragraph):
            lines.append(block.text)
            total += len(lines[-1])
        else:
            cells: list[Paragraph | Table] = []
            for row in block.rows:
                for cell in row.cells:
                    cells.extend(cell.iter_inner_content())
            pending.extend(reversed(cells))
        if total > max_chars:
            raise Refused("too_much_text")
    text = "\n".join(lines).strip()
    if not text:
        raise Refused("empty")
    content_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    return {"kind": "docx", "content_type": content_type, "text": text, "pages": None}


def storable(text: str) -> str:
    """The text as any database stores it: a PDF's text layer may hold NUL characters (which
    PostgreSQL's text cannot) or halves of surrogate pairs (which UTF-8 cannot)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    except (ImportError, ValueError, OSError):
        pass  # not on this system: the time limit still holds


def main() -> None:
    path, name, max_pages, max_chars = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    _limit_memory()
    sys.setrecursionlimit(5000)
    try:
        answer = sniff_and_read(Path(path).read_bytes(), name, max_pages, max_chars)
        answer["text"] = storable(str(answer["text"]))
    except Refused as exc:
        answer = {"refused": str(exc)}
    except (MemoryError, RecursionError):
        answer = {"refused": "too_complex"}
    except Exception:
        answer = {"refused": "broken"}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
