"""The Korean catalogues hold every text of the site, translated, and the committed .mo files are
compiled from the committed .po files.

The Makefile's `messages` target (makemessages for the templates and Python, and for the page's
scripts, then compilemessages) runs on a copy of the tree: had anyone added a text without
translating it, or changed a .po without compiling it, the copy's catalogues would differ from the
committed ones. GNU gettext's tools do the work, as they do for a person (`make gettext` installs
them; `make test` asks for it).
"""

import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATALOGUES = ROOT / "locale" / "ko" / "LC_MESSAGES"
DOMAINS = ["django", "djangojs"]
# What a copy of the tree leaves out: nothing that holds the site's texts. (The coverage data, which
# other workers' processes write meanwhile, neither.)
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", ".*_cache", ".env", "*.sqlite3*", "logs", "test-artifacts", ".cov*"
)


def catalogue(mo: Path) -> dict[object, str]:
    """A compiled catalogue's translations, without its header (which carries dates)."""
    with mo.open("rb") as compiled:
        translations = gettext.GNUTranslations(compiled)
    entries: dict[object, str] = vars(translations)["_catalog"]
    return {key: text for key, text in entries.items() if key != ""}


@pytest.fixture(scope="module")
def remade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tree whose catalogues `make messages` has made again."""
    if not (shutil.which("xgettext") and shutil.which("msgfmt") and shutil.which("make")):
        pytest.skip("GNU gettext's tools are not installed (make gettext)")
    copy = tmp_path_factory.mktemp("tree") / "site"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    # The copy's settings need a secret to load, and nothing else from .env.
    env = {**os.environ, "DJANGO_SECRET_KEY": "makemessages"}
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(copy), "messages", f"PY={sys.executable}"],
        env=env,
        check=True,
        capture_output=True,
    )
    return copy / "locale" / "ko" / "LC_MESSAGES"


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_text_of_the_site_has_a_korean_translation(remade: Path, domain: str):
    statistics = subprocess.run(
        ["msgfmt", "--statistics", "-o", os.devnull, str(remade / f"{domain}.po")],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    # "147 translated messages." and nothing about fuzzy or untranslated ones.
    assert re.fullmatch(r"\d+ translated messages?\.\n", statistics), statistics
    # No text dropped or moved either: the committed .po is the one makemessages makes.
    assert msgids(remade / f"{domain}.po") == msgids(CATALOGUES / f"{domain}.po")


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_committed_mo_is_compiled_from_the_committed_po(remade: Path, domain: str):
    assert catalogue(CATALOGUES / f"{domain}.mo") == catalogue(remade / f"{domain}.mo")


def msgids(po: Path) -> list[str]:
    """The entries' msgctxt and msgid lines, in order: not their translations, references or comments."""
    kept, keeping = [], False
    for line in po.read_text().splitlines():
        if line.startswith(("msgctxt", "msgid")):
            keeping = True
        elif not line.startswith('"'):
            keeping = False
        if keeping:
            kept.append(line)
    return kept
