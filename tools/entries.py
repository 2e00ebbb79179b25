"""Writing paper entries: canonical field order, the schema hint line, and file names from keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .catalog import SCHEMA_HINT
from .yamlio import dump_yaml, write_text_atomic

__all__ = ["FIELD_ORDER", "entry_text", "write_entry"]

FIELD_ORDER = (
    "key", "title", "aliases", "authors", "authors_truncated", "year", "venue", "arxiv", "doi", "url", "code",
    "placement", "tags", "training", "models", "benchmarks", "reported", "implementation", "sources", "added",
)


def entry_text(data: dict[str, Any]) -> str:
    """The YAML text of an entry: schema hint first, fields in canonical order, empty values left out."""
    # authors stays even when empty: an empty list says "no source lists them".
    ordered = {name: data.get(name, []) if name == "authors" else data[name]
               for name in FIELD_ORDER if name == "authors" or data.get(name) not in (None, "", [])}
    extra = set(data) - set(FIELD_ORDER)
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)} for entry {data.get('key')!r}")
    return dump_yaml(ordered, header=SCHEMA_HINT)


def write_entry(papers_dir: Path, data: dict[str, Any]) -> Path:
    path = Path(papers_dir) / f"{data['key']}.yaml"
    write_text_atomic(path, entry_text(data))
    return path
