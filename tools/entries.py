"""Writing paper entries: canonical field order, the schema hint line, and file names from keys."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .catalog import SCHEMA_HINT, load_catalog
from .paths import UnsafePathError, entry_path, folded_names
from .yamlio import dump_yaml, write_text_atomic

__all__ = [
    "FIELD_ORDER",
    "EntryCheckError",
    "entry_text",
    "write_entry",
    "write_entries",
    "planned_writes",
    "check_then_write",
]

FIELD_ORDER = (
    "key",
    "title",
    "aliases",
    "summary",
    "authors",
    "authors_truncated",
    "year",
    "venue",
    "arxiv",
    "doi",
    "url",
    "code",
    "placement",
    "tags",
    "training",
    "models",
    "benchmarks",
    "reported",
    "expectations",
    "implementation",
    "sources",
    "added",
)


def entry_text(data: dict[str, Any]) -> str:
    """The YAML text of an entry: schema hint first, fields in canonical order, empty values left out."""
    # authors stays even when empty: an empty list says "no source lists them".
    ordered = {
        name: data.get(name, []) if name == "authors" else data[name]
        for name in FIELD_ORDER
        if name == "authors" or data.get(name) not in (None, "", [])
    }
    extra = set(data) - set(FIELD_ORDER)
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)} for entry {data.get('key')!r}")
    return dump_yaml(ordered, header=SCHEMA_HINT)


def write_entry(papers_dir: Path, data: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write ``papers_dir/<key>.yaml``; raises :class:`~tools.paths.UnsafePathError` for an unsafe key
    or (unless ``overwrite``) an existing file."""
    return write_entries(papers_dir, [data], overwrite=overwrite)[0]


def planned_writes(
    papers_dir: Path,
    entries: Iterable[dict[str, Any]],
    *,
    overwrite: bool = False,
    text: Callable[[dict[str, Any]], str] = entry_text,
    if_exists: str = "pass --force to overwrite it",
) -> dict[Path, str]:
    """Path -> ``text(entry)`` for every entry, after checking every path (:func:`~tools.paths.entry_path`).

    Raises:
        UnsafePathError: naming every refused key (one per line), or two entries of the list that
            would share a file; nothing has been written.
    """
    papers_dir = Path(papers_dir)
    names = folded_names(papers_dir)
    planned: dict[Path, str] = {}
    planned_names: set[str] = set()
    problems = []
    for data in entries:
        try:
            path = entry_path(papers_dir, data.get("key"), overwrite=overwrite, names=names, if_exists=if_exists)
        except UnsafePathError as error:
            problems.append(str(error))
            continue
        if path.name.casefold() in planned_names:
            key = data.get("key")
            problems.append(f"refusing key {key!r}: another new entry maps to the same file (ignoring case)")
            continue
        planned[path] = text(data)
        planned_names.add(path.name.casefold())
    if problems:
        raise UnsafePathError("\n".join(problems))
    return planned


def write_entries(papers_dir: Path, entries: Iterable[dict[str, Any]], *, overwrite: bool = False) -> list[Path]:
    """Write every entry, or none when any path is refused (see :func:`planned_writes`)."""
    planned = planned_writes(papers_dir, entries, overwrite=overwrite)
    for path, text in planned.items():
        write_text_atomic(path, text)
    return list(planned)


class EntryCheckError(ValueError):
    """New entries that ``validate`` would refuse; nothing was written.

    ``problems`` holds one :class:`~tools.checks.Problem` per refusal (file, line, field, message).
    """

    def __init__(self, problems: list[Any]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


def check_then_write(
    root: Path, entries: Iterable[dict[str, Any]], *, overwrite: bool = False, dry_run: bool = False
) -> list[Path]:
    """Write the entries only when every path is safe and every new file validates; returns the paths.

    Every command that creates entries (``new``, ``bib import``, ``import-tsv``) goes through here, so
    what they write is what ``validate`` accepts. Problems elsewhere in the repository (another
    entry, the taxonomy) are ``validate``'s to report and do not block the write.

    Raises:
        UnsafePathError: a key that cannot be a file name (see :func:`planned_writes`).
        EntryCheckError: the problems of the new files; nothing has been written.
    """
    root = Path(root).resolve()
    planned = planned_writes(root / "papers", entries, overwrite=overwrite)
    catalog = load_catalog(root, list(planned), new_files=planned)
    new_files = {path.resolve().relative_to(root).as_posix() for path in planned}
    problems = [problem for problem in catalog.errors if Path(problem.path).as_posix() in new_files]
    if problems:
        raise EntryCheckError(problems)
    if not dry_run:
        for path, text in planned.items():
            write_text_atomic(path, text)
    return list(planned)
