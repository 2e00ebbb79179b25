"""The one place that turns a paper key into a file path, and the rules every written path obeys.

Every file the tools write for an entry goes through :func:`entry_path`: the key must be a plain
file name (the schema's key pattern, at most :data:`MAX_KEY_LENGTH` characters, no ``..``), the
path must resolve to a direct child of ``papers/``, and it must not differ only in letter case
from an existing file (such a pair collides on case-insensitive file systems). An existing file is
refused unless the caller says ``overwrite=True``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .schema import KEY_PATTERN, MAX_KEY_LENGTH

__all__ = ["UnsafePathError", "entry_path", "key_problem", "case_twin", "folded_names"]


class UnsafePathError(ValueError):
    """A key that does not map to a fresh file directly inside ``papers/``; the message says why."""


def key_problem(key: object) -> str | None:
    """Why ``key`` cannot be a file name under ``papers/``, or None when it can."""
    if not isinstance(key, str) or not key:
        return "the key must be a non-empty string"
    if len(key) > MAX_KEY_LENGTH:
        return f"the key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed"
    if "/" in key or "\\" in key:
        return "the key must not contain a path separator"
    if ".." in key:
        return "the key must not contain '..'"
    if not re.fullmatch(KEY_PATTERN.strip("^$"), key):
        return f"the key must match {KEY_PATTERN} (letters, digits and _ . : - only, starting with a letter or digit)"
    return None


def folded_names(directory: Path) -> dict[str, str]:
    """Case-folded name -> name of every file in ``directory`` (for checking many keys at once)."""
    return (
        {path.name.casefold(): path.name for path in sorted(Path(directory).iterdir())}
        if Path(directory).is_dir()
        else {}
    )


def case_twin(directory: Path, name: str, names: dict[str, str] | None = None) -> Path | None:
    """An existing file in ``directory`` whose name equals ``name`` except for letter case."""
    existing = (names if names is not None else folded_names(directory)).get(name.casefold())
    return Path(directory) / existing if existing is not None and existing != name else None


def entry_path(
    papers_dir: Path,
    key: object,
    *,
    overwrite: bool = False,
    names: dict[str, str] | None = None,
    if_exists: str = "pass --force to overwrite it",
) -> Path:
    """``papers_dir/<key>.yaml``, after checking that writing it is safe. The same rules hold for any
    folder of entry-shaped files (``triage`` candidates): messages name the folder by its own name.

    Raises:
        UnsafePathError: the key is not a plain file name, the path would leave ``papers_dir``,
            another file differs from it only in case, or the file exists and ``overwrite`` is False
            (the message ends with ``if_exists``, what to do about it).
            ``names`` (from :func:`folded_names`) saves listing the folder again for each key.
    """
    problem = key_problem(key)
    if problem:
        raise UnsafePathError(f"refusing key {key!r}: {problem}")
    papers_dir = Path(papers_dir)
    folder = papers_dir.name
    path = papers_dir / f"{key}.yaml"
    if path.is_symlink():
        raise UnsafePathError(f"refusing key {key!r}: {folder}/{key}.yaml is a symbolic link")
    if path.resolve().parent != papers_dir.resolve():
        raise UnsafePathError(f"refusing key {key!r}: {folder}/{key}.yaml would resolve outside {folder}/")
    twin = case_twin(papers_dir, path.name, names)
    if twin is not None:
        raise UnsafePathError(f"refusing key {key!r}: {folder}/{twin.name} differs only in letter case")
    if path.exists() and not overwrite:
        raise UnsafePathError(f"refusing key {key!r}: {folder}/{path.name} already exists ({if_exists})")
    return path
