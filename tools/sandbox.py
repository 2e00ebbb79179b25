"""A throw-away copy of what the site is built from, for tests and the scale benchmark.

Data and site configuration are copied (so they can be edited); code folders are symlinked.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from .catalog import ROOT

__all__ = ["make_sandbox"]

_DOCS_BY_HAND = ("about.md", "contributing.md", "notes", "javascripts", "stylesheets", "overrides")


def make_sandbox(target: Path, paper_keys: Iterable[str] | None = (), *, source: Path = ROOT) -> Path:
    """Copy taxonomy, tools, site config and the given papers (all when ``None``) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "taxonomy", target / "taxonomy")
    shutil.copytree(source / "tools", target / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "papers").mkdir()
    shutil.copy(source / "papers" / "paper.schema.json", target / "papers")
    papers = (
        sorted((source / "papers").glob("*.yaml"))
        if paper_keys is None
        else [source / "papers" / f"{key}.yaml" for key in paper_keys]
    )
    for path in papers:
        shutil.copy(path, target / "papers")
    shutil.copy(source / "mkdocs.yml", target)
    shutil.copy(source / "CONTRIBUTING.md", target)
    (target / "docs").mkdir()
    for name in _DOCS_BY_HAND:
        origin = source / "docs" / name
        (shutil.copytree if origin.is_dir() else shutil.copy)(origin, target / "docs" / name)
    for name in ("reference_impls", "notebooks"):
        (target / name).symlink_to(source / name, target_is_directory=True)
    return target
