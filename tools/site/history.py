"""When each source file last changed, from ``git log``: the "last updated" line of a page.

One ``git log`` call over the folders the pages come from. Where git cannot tell, the page says so
instead of guessing: outside a git checkout, for files never committed, and in a shallow clone for
files whose newest commit is the clone's boundary (git shows every older file as added there).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["History", "load_history", "NO_GIT", "SHALLOW", "UNCOMMITTED"]

# Why a date is unknown, as the page states it.
NO_GIT = "not known (no git history in this copy)"
SHALLOW = "not known (shallow clone: history cut before this file's last change)"
UNCOMMITTED = "not yet committed"

_FOLDERS = ("papers", "taxonomy", "notebooks")


@dataclass
class History:
    """Commit dates per repository-relative path; ``reason`` is set when git gave nothing."""

    updated: dict[str, dt.date] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # last touched by a shallow boundary commit
    reason: str = ""

    def last_updated(self, path: str) -> dt.date | None:
        return self.updated.get(path)

    def describe(self, *paths: str) -> str:
        """The newest date among ``paths`` (ISO), or why it is not known."""
        if self.reason:
            return self.reason
        dates = [self.updated[path] for path in paths if path in self.updated]
        if any(path in self.unknown for path in paths):
            return SHALLOW
        if not dates:
            return UNCOMMITTED
        return max(dates).isoformat()


def _git(root: Path, *arguments: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def load_history(root: Path) -> History:
    """Commit dates of every file under papers/, taxonomy/ and notebooks/ (one ``git log``)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        # Not a checkout of its own (a copy, an export, or a folder inside another repository).
        return History(reason=NO_GIT)
    shallow_file = _git(root, "rev-parse", "--git-path", "shallow")
    boundary: set[str] = set()
    if shallow_file is not None:
        path = Path(shallow_file.strip())
        path = path if path.is_absolute() else root / path
        if path.is_file():
            boundary = set(path.read_text(encoding="utf-8").split())
    log = _git(root, "log", "--format=%x00%H %cs", "--name-only", "--no-renames", "--", *_FOLDERS)
    if log is None:
        return History(reason=NO_GIT)
    history = History()
    for block in log.split("\x00")[1:]:
        header, _, names = block.partition("\n")
        commit, _, day = header.partition(" ")
        date = dt.date.fromisoformat(day.strip())
        for name in names.split("\n"):
            name = name.strip()
            # Newest commit first: the first date seen for a path is its last change.
            if name and name not in history.updated and name not in history.unknown:
                if commit in boundary:
                    history.unknown.add(name)
                else:
                    history.updated[name] = date
    return history
