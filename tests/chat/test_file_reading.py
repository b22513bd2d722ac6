"""What the site reads from a file (chat/file_reading.py), with files the tests make: the kind from
the bytes, not the name; a PDF's text layer page by page, Korean included; a DOCX's paragraphs and
tables; a scanned PDF refused with a sentence; and a PDF bomb or a deeply nested DOCX stopped in
the child process, within the time limit, never read by the site's own."""

import io
import json
import subprocess
import zipfile
import zlib
from pathlib import Path

import docx
import pytest
from fpdf import FPDF
from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, StreamObject

from chat import attachments
from chat.file_reading import Refused, sniff_and_read, storable

KOREAN = "부산 여행 예산은 삼백만 원입니다."
# fonts-nanum (the Makefile's `fonts` target installs it): a TrueType font with Hangul for fpdf2.
HANGUL_FONT = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")


def read(data: bytes, name: str) -> dict[str, object]:
    return sniff_and_read(data, name, attachments.MAX_PAGES, attachments.MAX_CHARS)


def refusal(data: bytes, name: str) -> str:
    with pytest.raises(Refused) as refused:
        read(data, name)
    return str(refused.value)


def korean_pdf(pages: int) -> bytes:
    if not HANGUL_FONT.exists():
        pytest.fail(f"No font with Hangul at {HANGUL_FONT}: run `make fonts` (Debian's fonts-nanum).")
    pdf = FPDF()
    pdf.add_font("Nanum", fname=str(HANGUL_FONT))
    pdf.set_font("Nanum", size=14)
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.multi_cell(0, 10, f"{page}쪽: {KOREAN} Page {page}.")
    return bytes(pdf.output())


def test_a_korean_pdfs_text_layer_is_read_page_by_page():
    got = read(korean_pdf(3), "예산.pdf")
    assert got["kind"] == "pdf" and got["content_type"] == "application/pdf" and got["pages"] == 3
    pages = str(got["text"]).split("\f")
    assert [page.strip() for page in pages] == [f"{n}쪽: {KOREAN} Page {n}." for n in (1, 2, 3)]


def test_a_scanned_pdf_with_no_text_layer_is_refused_saying_so(client, alice, settings, tmp_path):
    settings.CHAT_FILES_ROOT = tmp_path
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 100, 140, style="F")  # a picture of a page, as a scanner makes: no text in it
    client.force_login(alice)
    response = client.post("/files", {"file": _named(bytes(pdf.output()), "scan.pdf")})
    assert response.status_code == 400
    assert "“scan.pdf” has no text layer (a scanned PDF?)" in response.json()["error"]


def _named(data: bytes, name: str) -> io.BytesIO:
    named = io.BytesIO(data)
    named.name = name
    return named


def test_a_pdf_of_more_pages_than_are_read_is_refused_with_the_count():
    pdf = FPDF()
    for _ in range(attachments.MAX_PAGES + 1):
        pdf.add_page()
    assert refusal(bytes(pdf.output()), "long.pdf") == f"too_many_pages:{attachments.MAX_PAGES + 1}"


def test_a_docx_is_read_with_its_tables_in_order():
    document = docx.Document()
    document.add_heading("Trip plan", level=1)
    document.add_paragraph(KOREAN)
    table = document.add_table(rows=2, cols=2)
    for row, cells in enumerate([("Item", "Cost"), ("Hotel", "900,000")]):
        for column, text in enumerate(cells):
            table.cell(row, column).text = text
    document.add_paragraph("After the table.")
    saved = io.BytesIO()
    document.save(saved)
    got = read(saved.getvalue(), "plan.docx")
    assert got["kind"] == "docx"
    assert str(got["text"]).split("\n") == ["Trip plan", KOREAN, "Item", "Cost", "Hotel", "900,000", "After the table."]


@pytest.mark.parametrize(
    "name, data, kind",
    [
        ("data.txt", json.dumps({"budget": 3000000, "city": "부산"}), "json"),
        ("costs", "item,cost,paid\nhotel,900000,yes\ntrain,120000,no\n", "csv"),
        ("notes.txt", "import os\n\ndef budget():\n    return 3_000_000\n\nclass Trip:\n    pass\n", "code"),
        ("main.rs", "fn main() {}\n", "code"),
        ("README", "# Trip\n\n- Busan\n- Seoul\n\nSee [the map](https://example.com).\n", "markdown"),
        (
            "page.txt",
            "<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body><p>Hi</p></body></html>",
            "html",
        ),
        ("letter.txt", "Dear team,\nthe trip is on.\n", "text"),
    ],
)
def test_the_kind_is_read_from_the_content_not_only_the_name(name, data, kind):
    assert read(data.encode(), name)["kind"] == kind


def test_html_is_read_as_text_only():
    page = "<html><body><script>steal()</script><h1>Plan</h1><p>Busan &amp; Seoul</p><!-- note --></body></html>"
    assert read(page.encode(), "p.html")["text"] == "Plan\nBusan & Seoul"


def test_a_legacy_korean_encoding_is_decoded():
    text = f"{KOREAN}\n서울에서 부산까지 기차로 갑니다. 호텔은 해운대에 있습니다.\n" * 5
    assert read(text.encode("cp949"), "memo.txt")["text"] == text


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>', "image"),
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4, "image"),
        ("archive.zip", None, "binary"),
        ("blob.bin", bytes(range(256)) * 16, "binary"),
    ],
)
def test_what_is_no_text_is_refused(name, data, reason):
    if data is None:
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as archive:
            archive.writestr("a.txt", "hello")
        data = packed.getvalue()
    assert refusal(data, name) == reason


def pdf_time_bomb(operators: int) -> bytes:
    """A small PDF (tens of KB) whose one page's content stream inflates to millions of text
    operators: reading it takes minutes of pure Python."""
    writer = PdfWriter()
    page = writer.add_blank_page(200, 200)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    fonts = DictionaryObject({NameObject("/F1"): writer._add_object(font)})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
    stream = StreamObject()
    stream._data = zlib.compress(b"BT /F1 12 Tf 10 10 Td " + b"(A) Tj 1 0 Td " * operators + b"ET\n", 9)
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    page[NameObject("/Contents")] = writer._add_object(stream)
    written = io.BytesIO()
    writer.write(written)
    return written.getvalue()


def test_a_pdf_bomb_is_stopped_at_the_time_limit_in_its_own_process(settings, tmp_path, monkeypatch):
    settings.CHAT_FILE_EXTRACT_SECONDS = 2
    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(pdf_time_bomb(2_000_000))
    assert bomb.stat().st_size < 200_000
    children: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def watched(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(subprocess, "Popen", watched)
    with pytest.raises(attachments.FileRefused) as refused:
        attachments.read_in_child(bomb, "bomb.pdf")
    assert refused.value.status == 400 and refused.value.message == "Reading “bomb.pdf” took too long; it was stopped."
    # Read by a child, which was killed: the site's own process never parsed it.
    [child] = children
    assert child.returncode is not None and child.returncode < 0


def nested_docx(depth: int) -> bytes:
    """A DOCX made by python-docx whose body then holds a table nested `depth` deep."""
    document = docx.Document()
    document.add_paragraph("Outside")
    saved = io.BytesIO()
    document.save(saved)
    cell = "<w:tbl><w:tr><w:tc>{}</w:tc></w:tr></w:tbl>"
    nested = "<w:p><w:r><w:t>deep</w:t></w:r></w:p>"
    for _ in range(depth):
        nested = cell.format(nested)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved.getvalue())) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                data = data.replace(b"<w:sectPr", nested.encode() + b"<w:sectPr", 1)
            target.writestr(item, data)
    return out.getvalue()


def test_a_deeply_nested_docx_is_refused_in_its_own_process(settings, tmp_path):
    nested = tmp_path / "nested.docx"
    nested.write_bytes(nested_docx(5000))
    with pytest.raises(attachments.FileRefused) as refused:
        attachments.read_in_child(nested, "nested.docx")
    assert refused.value.status == 400 and "nested.docx" in refused.value.message


def test_a_docx_nested_a_little_is_read(tmp_path):
    assert read(nested_docx(3), "n.docx")["text"] == "Outside\ndeep"


def test_text_a_database_cannot_store_is_made_storable():
    assert storable("a\x00b\ud800c 부산") == "ab?c 부산"
