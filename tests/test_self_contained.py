"""The repository is self-contained: no text points a reader at notes outside it, and every
``<page>.md §N`` citation names a page of the repository and a numbered heading of that page.

What a reader needs lives in ``docs/notes/`` (the site's Notes section) or in a package README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.site.build import GENERATED

ROOT = Path(__file__).resolve().parents[1]

# Spelt apart on purpose, so that this file does not contain what it forbids.
OUTSIDE = ("shared" + "/design", "../" + "shared", "kv-cache-on-" + "transformers5")
DESIGN_NOTE = re.compile(r"design[ -]" + r"notes?", re.IGNORECASE)

# A mention of design notes that is fine although its line names no existing file: why.
ALLOWED = {
    ("tools/site/implementations.py", "from `{source}`"): "the heading of a package README's section; "
    "{source} is that README's in-repo path",
}

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".html", ".css", ".js", ".cfg"}
PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.(?:md|py|yaml|yml|json|toml))")
# ``docs/notes/x.md`` §2, §6 / README.md §2.3 / toyvlm.md §1-§2 / transformers5.md §6 and §10
CITATION = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.md)[`'\"]*((?:\s*(?:,|and|-)?\s*§\s*\d+(?:\.\d+)*)+)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


def _hand_written_docs() -> list[Path]:
    docs = ROOT / "docs"
    generated = [docs / name for name in GENERATED]
    return [
        path
        for path in docs.rglob("*")
        if path.is_file() and not any(path == g or g in path.parents for g in generated)
    ]


def scanned_files() -> list[Path]:
    """reference_impls/, notebooks/ (not the renders), tools/, taxonomy/, hand-written docs/ and top-level text."""
    files: list[Path] = []
    for folder in ("reference_impls", "notebooks", "tools", "taxonomy"):
        files += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "_rendered" not in path.parts and "__pycache__" not in path.parts
        ]
    files += _hand_written_docs()
    files += [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "mkdocs.yml", "pyproject.toml")]
    return sorted(
        path for path in files if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 2_000_000
    )


def _lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        yield path.relative_to(ROOT).as_posix(), number, line


def _resolve(name: str, citing: Path) -> Path | None:
    """The file a path names, from the repository root or from the citing file's folder."""
    for base in (ROOT, citing.parent):
        if (base / name).is_file():
            return base / name
    return None


def _names_an_existing_file(line: str, citing: Path) -> bool:
    return any(_resolve(match, citing) for match in PATH.findall(line))


def outside_pointers() -> list[str]:
    problems = []
    for path in scanned_files():
        for name, number, line in _lines(path):
            for needle in OUTSIDE:
                if needle in line:
                    problems.append(f"{name}:{number}: points outside the repository ({needle!r}): {line.strip()}")
            if (
                DESIGN_NOTE.search(line)
                and not _names_an_existing_file(line, path)
                and not any(name == file and marker in line for file, marker in ALLOWED)
            ):
                problems.append(f"{name}:{number}: a design note without an in-repo path: {line.strip()}")
    return problems


def _headings(page: Path) -> set[str]:
    return set(HEADING.findall(page.read_text(encoding="utf-8")))


def broken_citations() -> list[str]:
    problems = []
    for path in scanned_files():
        for name, number, line in _lines(path):
            for page_name, sections in CITATION.findall(line):
                page = _resolve(page_name, path)
                if page is None:
                    problems.append(f"{name}:{number}: cites {page_name}, which is not a file of the repository")
                    continue
                for section in re.findall(r"§\s*(\d+(?:\.\d+)*)", sections):
                    if section not in _headings(page):
                        problems.append(f"{name}:{number}: {page_name} has no heading numbered {section}")
    return problems


def test_nothing_points_outside_the_repository():
    assert outside_pointers() == []


def test_section_citations_resolve():
    assert broken_citations() == []


def test_notes_pages_are_cited_and_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    cited = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in scanned_files())
    pages = sorted((ROOT / "docs" / "notes").glob("*.md"))
    assert pages
    for page in pages:
        assert f"notes/{page.name}" in nav, f"{page.name} is not in the mkdocs.yml nav"
        assert f"docs/notes/{page.name}" in cited, f"nothing cites docs/notes/{page.name}"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("see ``docs/notes/transformers5.md`` §2, §6 and §10.", [("docs/notes/transformers5.md", ["2", "6", "10"])]),
        ("(`docs/notes/toyvlm.md` §1-§2)", [("docs/notes/toyvlm.md", ["1", "2"])]),
        (
            "in reference_impls/continual_ad/hfolb/README.md §2.3, not",
            [("reference_impls/continual_ad/hfolb/README.md", ["2.3"])],
        ),
    ],
)
def test_citation_pattern(line, expected):
    found = [(page, re.findall(r"§\s*(\d+(?:\.\d+)*)", sections)) for page, sections in CITATION.findall(line)]
    assert found == expected
