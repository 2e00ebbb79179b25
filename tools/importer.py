"""``import-tsv``: turn the rows of the shared paper table into entries (nothing invented).

Empty TSV fields stay absent. The heuristic stage/family label is mapped to taxonomy ids through
``tools/import_map.yaml`` (defaults, reviewed per-key overrides, duplicate merges, and rows excluded
as out of scope with their reason).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

from .catalog import ROOT, tidy_title
from .entries import EntryCheckError, check_then_write
from .paths import key_problem
from .yamlio import YamlLoadError, load_yaml, read_text_input

__all__ = ["row_to_entry", "import_tsv"]

_DOI_URL = re.compile(r"^https?://(?:dx\.)?doi\.org/(10\..+)$")
_TRUNCATION = " and others"


def _authors(field: str) -> tuple[list[str], bool]:
    field = field.strip()
    truncated = field.endswith(_TRUNCATION) or field == "others"
    if truncated:
        field = field[: -len(_TRUNCATION)] if field.endswith(_TRUNCATION) else ""
    names = [name.strip() for name in field.split(" and ") if name.strip()] if field else []
    return names, truncated


def _tags(row: dict[str, str]) -> list[str]:
    tags = []
    title = row["title"].lower()
    if "video" in title:
        tags.append("video")
    if re.search(r"training[- ]free", title):
        tags.append("training-free")
    if row.get("family"):
        tags.append(row["family"].strip().lower())
    return list(dict.fromkeys(tags))


def row_to_entry(row: dict[str, str], placement: list[str], added: str) -> dict[str, Any]:
    """One TSV row as entry data (fields in canonical order, empty ones omitted)."""
    authors, truncated = _authors(row.get("authors", ""))
    url = row.get("url", "").strip()
    doi_match = _DOI_URL.match(url)
    tags = _tags(row)
    entry: dict[str, Any] = {
        "key": row["key"].strip(),
        "title": tidy_title(row["title"]),
        "authors": authors,
        "authors_truncated": truncated or None,
        # A year that is not a number stays text, so validate names it (and its line) instead of int() failing.
        "year": int(year) if (year := row.get("year", "").strip()).isdigit() else year or None,
        "venue": row.get("venue", "").strip(),
        "arxiv": row.get("arxiv", "").strip(),
        "doi": doi_match.group(1) if doi_match else "",
        "url": url,
        "code": row.get("code", "").strip(),
        "placement": placement,
        "tags": tags,
        "training": "training-free" if "training-free" in tags else None,
        "sources": [source.strip() for source in row.get("source", "").split(";") if source.strip()],
        "added": added,
    }
    return {name: value for name, value in entry.items() if name == "authors" or value not in (None, "", [])}


def _merge(kept: dict[str, Any], dropped: dict[str, Any]) -> dict[str, Any]:
    merged = dict(kept)
    for name, value in dropped.items():
        if name in ("sources", "tags"):
            merged[name] = list(dict.fromkeys(kept.get(name, []) + value))
        elif name not in merged or merged[name] in ("", [], None):
            merged[name] = value
    return merged


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


# Each section of tools/import_map.yaml: what its values are, and the check they pass.
_MAP_SECTIONS = {
    "defaults": ("a list of taxonomy ids", _is_id_list),
    "overrides": ("a list of taxonomy ids", _is_id_list),
    "merge": ("the key it merges into", _is_text),
    "exclude": ("the reason", _is_text),
}


def _import_map(path: Path) -> list[dict[str, Any]]:
    """The import map's sections in :data:`_MAP_SECTIONS` order, each checked for its shape (a
    hand-edited map fails here with file, line and what was expected, not with a traceback)."""
    try:
        loaded = load_yaml(path)
    except YamlLoadError as error:
        raise ValueError(str(error)) from None
    mapping = loaded.data if isinstance(loaded.data, dict) else {}
    sections = []
    for name, (expected, fits) in _MAP_SECTIONS.items():
        section = mapping.get(name) or {}
        if not isinstance(section, dict) or (name == "defaults" and not section):
            raise ValueError(f"{path}:{loaded.line_of((name,))}: {name}: expected a mapping of labels or keys")
        for key, value in section.items():
            if not isinstance(key, str) or not fits(value):
                raise ValueError(f"{path}:{loaded.line_of((name, key))}: {name}.{key}: expected {expected}")
        sections.append(section)
    return sections


def _tsv_entries(
    tsv_path: Path, *, root: Path = ROOT, added: str | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, int], list[str]]:
    """The table's rows as entry data, nothing written; returns (key -> entry, key -> TSV line, messages).

    Raises ``ValueError`` naming the TSV line of every row that is malformed, has a key that cannot
    be a file name, repeats a key or has a label that ``tools/import_map.yaml`` does not map.
    """
    added = added or dt.date.today().isoformat()
    defaults, overrides, merges, excluded = _import_map(root / "tools" / "import_map.yaml")
    # Read through the tools' one input reader: its size cap and its line and column for bytes
    # that are not UTF-8 (open() gave a bare UnicodeDecodeError and read /dev/zero without end).
    text = read_text_input(tsv_path)
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    entries: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    problems = []  # every bad row is named at once, as validate names every bad entry
    for line, row in enumerate(rows, start=2):
        if not row.get("key") or not row.get("title") or None in row.values():
            problems.append(f"{tsv_path}:{line}: malformed row (missing key/title or wrong number of columns)")
            continue
        key = row["key"].strip()
        if key in excluded:
            continue
        label = f"{row.get('stage', '').strip()}/{row.get('family', '').strip()}"
        placement = overrides.get(key) or defaults.get(label)
        if (unsafe := key_problem(key)) is not None:
            problems.append(f"{tsv_path}:{line}: refusing key {key!r}: {unsafe}")
        elif not placement:
            problems.append(
                f"{tsv_path}:{line}: {key}: no placement for label '{label}' (add it to tools/import_map.yaml)"
            )
        elif key in entries:
            problems.append(f"{tsv_path}:{line}: duplicate key '{key}' (first on line {lines[key]})")
        else:
            entries[key] = row_to_entry(row, list(placement), added)
            lines[key] = line
    if problems:
        raise ValueError("\n".join(problems))
    for dropped_key, kept_key in merges.items():
        if dropped_key in entries and kept_key in entries:
            entries[kept_key] = _merge(entries[kept_key], entries.pop(dropped_key))
    return entries, lines, [f"excluded {key}: {reason}" for key, reason in excluded.items()]


def import_tsv(
    tsv_path: Path, *, root: Path = ROOT, added: str | None = None, overwrite: bool = False
) -> tuple[list[Path], list[str]]:
    """Write one entry per row into ``root/papers``; returns (written paths, messages).

    Entries that already exist are kept (unless ``overwrite``). Nothing is written when any row
    fails: ``ValueError`` names the TSV line of each, for a malformed row, a key that cannot be a
    file name, an unmapped label or a row whose entry ``validate`` would refuse (field and reason).
    """
    entries, lines, messages = _tsv_entries(tsv_path, root=root, added=added)
    papers_dir = root / "papers"
    fresh = []
    for key, entry in entries.items():
        if (papers_dir / f"{key}.yaml").exists() and not overwrite:
            messages.append(f"kept existing papers/{key}.yaml")
            continue
        fresh.append(entry)
    try:
        return check_then_write(root, fresh, overwrite=overwrite), messages
    except EntryCheckError as error:
        refusals = [
            f"{tsv_path}:{lines.get(Path(problem.path).stem, '?')}: {Path(problem.path).stem}: "
            f"{problem.field}: {problem.message}"
            for problem in error.problems
        ]
        raise ValueError("\n".join(refusals + ["nothing was written"])) from None
