"""BibTeX out of the entries and into new entries (bibtexparser v2).

Fields kept both ways: key, title, authors (with truncation as ``and others``), year, venue, arXiv
id, DOI and URL. Export then import then export gives identical text (tested).

Export cannot be escaped from: every character of entry text that means something to BibTeX or
LaTeX (braces, backslash, ``& % $ # _ ~ ^``) is written as a text command, so a field value
holds only the braces we add, and every value is checked for balanced braces before writing.
Import decodes LaTeX to Unicode (``J{\\"o}rg`` -> ``Jörg``) with pylatexenc.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bibtexparser
import bibtexparser.middlewares
from bibtexparser import model
from bibtexparser.library import Library
from bibtexparser.middlewares import SeparateCoAuthors, SplitNameParts
from bibtexparser.writer import BibtexFormat
from pylatexenc.latex2text import LatexNodes2Text, MacroTextSpec, SpecialsTextSpec, get_default_latex_context_db

from .catalog import Catalog, normalise_title, tidy_title
from .checks import CONTROL_CHARACTERS
from .schema import KEY_PATTERN
from .yamlio import MAX_DEPTH, read_text_input

__all__ = [
    "JOURNAL_VENUES",
    "BibImportError",
    "entry_to_bibtex",
    "entries_to_bibtex",
    "bibtex_to_entries",
    "new_entries_from_bibtex",
    "entry_identities",
]

# Venues written as @article{journal=...}; every other non-arXiv venue is @inproceedings{booktitle=...}.
JOURNAL_VENUES = {
    "TPAMI",
    "IJCV",
    "TIP",
    "TMLR",
    "TCSVT",
    "TMM",
    "TNNLS",
    "TOMM",
    "JMLR",
    "Pattern Recognition",
    "Neurocomputing",
    "Information Fusion",
    "Neural Networks",
    "Knowledge-Based Systems",
    "Nature",
    "Transactions on Machine Learning Research",
    "ACM Computing Surveys",
    "IEEE Access",
}
# Text command for every character that BibTeX or LaTeX would read as syntax; braces and backslash
# become commands (not "\{"), because BibTeX counts a brace even after a backslash.
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\textbraceleft{}",
    "}": r"\textbraceright{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_ARXIV_IN_TEXT = re.compile(r"(?:arXiv:|arxiv\.org/(?:abs|pdf)/)(\d{4}\.\d{4,5})", re.IGNORECASE)


class BibImportError(ValueError):
    """A BibTeX file that cannot be imported; the message names the file and line."""


def _escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _latex_decoder() -> LatexNodes2Text:
    context = get_default_latex_context_db()
    # Our own escapes decode to the exact character; dashes and quotes stay as typed (LaTeX
    # would typeset "--" as an en dash, but the entry text is what the paper's BibTeX says).
    context.add_context_category(
        "atlas",
        prepend=True,
        macros=[
            MacroTextSpec("textbraceleft", "{"),
            MacroTextSpec("textbraceright", "}"),
            MacroTextSpec("textasciicircum", "^"),
            MacroTextSpec("textasciitilde", "~"),
            MacroTextSpec("textbackslash", "\\"),
        ],
        specials=[SpecialsTextSpec(chars, chars) for chars in ("--", "---", "``", "''", "!`", "?`")],
    )
    return LatexNodes2Text(latex_context=context, math_mode="verbatim", strict_latex_spaces=True)


_DECODER = _latex_decoder()


def _unescape(text: str) -> str:
    """LaTeX (accents, escapes, protective braces) to plain Unicode text."""
    return re.sub(r"\s+", " ", _DECODER.latex_to_text(text)).strip()


def _brace_depth(value: str) -> int:
    depth = deepest = 0
    for char in value:
        depth += {"{": 1, "}": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def _check_balanced(key: str, name: str, value: str) -> None:
    depth = 0
    for char in value:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"refusing to export {key}: field {name} has unbalanced braces: {value!r}")


def _protect_title(title: str) -> str:
    # Braces keep BibTeX styles from lower-casing acronyms and names ("{ViT}", "{LLaVA}").
    return re.sub(r"\b([A-Za-z]*[A-Z][A-Za-z0-9]*[A-Z0-9][A-Za-z0-9]*)\b", r"{\1}", _escape(title))


def _unprotect_title(title: str) -> str:
    return _unescape(title)


def entry_to_bibtex(data: dict[str, Any]) -> model.Entry:
    venue = data.get("venue", "")
    fields = [model.Field("title", _protect_title(data["title"]))]
    authors = list(data.get("authors") or [])
    if data.get("authors_truncated"):
        authors.append("others")
    if authors:
        fields.append(model.Field("author", " and ".join(_escape(name) for name in authors)))
    fields.append(model.Field("year", str(data["year"])))
    if venue == "arXiv":
        entry_type = "misc"
    elif venue in JOURNAL_VENUES:
        entry_type = "article"
        fields.append(model.Field("journal", _escape(venue)))
    else:
        entry_type = "inproceedings"
        fields.append(model.Field("booktitle", _escape(venue)))
    if data.get("arxiv"):
        fields += [model.Field("eprint", data["arxiv"]), model.Field("archiveprefix", "arXiv")]
    if data.get("doi"):
        fields.append(model.Field("doi", data["doi"]))
    if data.get("url"):
        fields.append(model.Field("url", data["url"]))
    if not re.fullmatch(KEY_PATTERN, str(data["key"])):
        raise ValueError(f"refusing to export key {data['key']!r}: it does not match {KEY_PATTERN}")
    # Control characters have no BibTeX spelling: export drops them from every field.
    fields = [model.Field(field.key, CONTROL_CHARACTERS.sub("", field.value)) for field in fields]
    for field in fields:
        _check_balanced(data["key"], field.key, field.value)
    return model.Entry(entry_type, data["key"], fields)


def entries_to_bibtex(entries: Iterable[dict[str, Any]]) -> str:
    """Deterministic BibTeX text for the given entry data, sorted by key."""
    library = Library()
    for data in sorted(entries, key=lambda item: item["key"]):
        library.add(entry_to_bibtex(data))
    bibtex_format = BibtexFormat()
    bibtex_format.indent = "  "
    bibtex_format.trailing_comma = True
    # The library is thrown away after writing, so the middlewares may modify it in place (fast).
    unparse_stack = bibtexparser.middlewares.default_unparse_stack(allow_inplace_modification=True)
    return bibtexparser.write_string(library, unparse_stack=unparse_stack, bibtex_format=bibtex_format)


# One entry's BibTeX per entry object (the object is kept so its id is not reused): the site shows
# every entry twice (its page and references.bib), and ``serve`` regenerates the file per edit.
_TEXTS: dict[int, tuple[dict[str, Any], str]] = {}


def entry_bibtex_text(data: dict[str, Any]) -> str:
    """``entries_to_bibtex([data])``, remembered for this (unchanging) entry object."""
    remembered = _TEXTS.get(id(data))
    if remembered is None or remembered[0] is not data:
        remembered = _TEXTS[id(data)] = (data, entries_to_bibtex([data]))
    return remembered[1]


def library_bibtex(entries: Iterable[dict[str, Any]]) -> str:
    """``entries_to_bibtex(entries)`` from the remembered texts (bibtexparser separates entries by
    one blank line)."""
    return "\n\n".join(entry_bibtex_text(data) for data in sorted(entries, key=lambda item: item["key"]))


def _name_first_last(parts) -> str:
    words = [" ".join(parts.first), " ".join(parts.von), " ".join(parts.last)]
    name = " ".join(word for word in words if word)
    return f"{name}, {' '.join(parts.jr)}" if parts.jr else name


def _failed_block_message(source: str, block) -> str:
    """``file:line: key: reason`` for a block bibtexparser could not parse."""
    error = block.error
    reason = getattr(error, "abort_reason", "") or str(error) or type(error).__name__
    reason = reason.split(" Note:")[0].strip()
    key = getattr(block, "key", None)
    if not key and (match := re.match(r"\s*@\w+\s*[{(]\s*([^,\s{}()]+)\s*,", block.raw)):
        key = match.group(1)
    return f"{source}:{block.start_line + 1}: " + (f"{key}: " if key else "") + f"cannot parse this entry: {reason}"


def bibtex_to_entries(text: str, source: str = "<string>") -> list[dict[str, Any]]:
    """Entry data (without placement/added) for every entry in a BibTeX text.

    Raises:
        BibImportError: on any block bibtexparser could not parse, duplicate keys or fields, or an
            entry without title or year.
    """
    parser_log = logging.getLogger("bibtexparser")
    level = parser_log.level
    parser_log.setLevel(logging.CRITICAL)  # every failed block is reported below, with its reason
    try:
        library = bibtexparser.parse_string(text, append_middleware=[SeparateCoAuthors(), SplitNameParts()])
    finally:
        parser_log.setLevel(level)
    problems = [_failed_block_message(source, block) for block in library.failed_blocks]
    entries = []
    for entry in library.entries:
        fields = {name.lower(): value for name, value in entry.fields_dict.items()}
        line = f"{source}:{entry.start_line + 1}: {entry.key}"
        deep = [
            (name, depth) for name, field in fields.items() if (depth := _brace_depth(str(field.value))) > MAX_DEPTH
        ]
        if deep:  # the LaTeX decoder recurses per brace: 2 000 of them stopped the import with a RecursionError
            problems += [
                f"{line}: {name}: braces nested {depth} deep; at most {MAX_DEPTH} are read" for name, depth in deep
            ]
            continue
        title = fields.get("title")
        year = fields.get("year")
        if title is None or year is None or not str(year.value).strip().isdigit():
            problems.append(f"{line}: an entry needs a title and a numeric year")
            continue
        names = fields["author"].value if "author" in fields else []
        authors = [_unescape(_name_first_last(parts)) for parts in names]
        truncated = bool(authors) and authors[-1].lower() == "others"
        if truncated:
            authors.pop()
        text_fields = " ".join(
            str(fields[name].value) for name in ("journal", "url", "note", "eprint") if name in fields
        )
        arxiv = (
            str(fields["eprint"].value)
            if "eprint" in fields and re.fullmatch(r"\d{4}\.\d{4,5}(v\d+)?", str(fields["eprint"].value))
            else ""
        )
        if not arxiv and (match := _ARXIV_IN_TEXT.search(text_fields)):
            arxiv = match.group(1)
        venue_field = fields.get("booktitle") or fields.get("journal")
        venue = _unprotect_title(str(venue_field.value)) if venue_field else ""
        if not venue or venue.lower().startswith("arxiv"):
            venue = "arXiv" if arxiv or entry.entry_type.lower() == "misc" else venue
        data: dict[str, Any] = {
            "key": entry.key,
            "title": tidy_title(_unprotect_title(str(title.value))),
            "authors": authors,
        }
        if truncated:
            data["authors_truncated"] = True
        data["year"] = int(str(year.value).strip())
        data["venue"] = venue
        for name, value in (
            ("arxiv", arxiv),
            ("doi", str(fields["doi"].value).strip() if "doi" in fields else ""),
            ("url", str(fields["url"].value).strip() if "url" in fields else ""),
        ):
            if value:
                data[name] = value
        entries.append(data)
    if problems:
        raise BibImportError("\n".join(problems))
    return entries


def new_entries_from_bibtex(
    path: Path, catalog: Catalog, placement: list[str], added: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries from a .bib file that are not already in the catalog; returns (new entries, skip messages).

    A BibTeX entry is a duplicate when its key, arXiv id, DOI or normalised title matches an
    existing entry (or an earlier entry of the same file).
    """
    imported = bibtex_to_entries(read_text_input(path), source=str(path))
    seen: dict[tuple[str, str], str] = {}
    for entry in catalog.entries:
        for identity in entry_identities(entry.data):
            seen.setdefault(identity, entry.key)
    fresh, skipped = [], []
    for data in imported:
        clash = next((seen[identity] for identity in entry_identities(data) if identity in seen), None)
        if clash:
            skipped.append(f"skipped {data['key']}: already in the catalog as {clash}")
            continue
        for identity in entry_identities(data):
            seen[identity] = data["key"]
        data["placement"] = list(placement)
        data["added"] = added or dt.date.today().isoformat()
        fresh.append(data)
    return fresh, skipped


def entry_identities(data: dict[str, Any]) -> list[tuple[str, str]]:
    identities = [("key", str(data.get("key", "")))]
    if data.get("arxiv"):
        identities.append(("arxiv", str(data["arxiv"]).split("v")[0]))
    if data.get("doi"):
        identities.append(("doi", str(data["doi"]).lower()))
    if isinstance(data.get("title"), str):
        identities.append(("title", normalise_title(data["title"])))
    return identities
