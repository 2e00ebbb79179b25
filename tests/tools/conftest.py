"""A throw-away copy of the repository's data (taxonomy, a few papers, site config) per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
SHARED_TSV = ROOT.parent / "shared" / "data" / "lvlm_efficiency_papers.tsv"
SEED_KEYS = ("zhang2026efficient", "fang2026superficial", "fang2026normality", "zeng2026hybridkv", "jiang2025kind")

GOOD_ENTRY = """\
# yaml-language-server: $schema=paper.schema.json
key: good2026entry
title: A Perfectly Good Entry About Visual Token Pruning
authors:
- Ada Lovelace
year: 2026
venue: arXiv
arxiv: '2611.00001'
url: https://arxiv.org/abs/2611.00001
placement:
- prefilling-attention-guided
added: '2026-11-26'
"""


def make_repo(target: Path, paper_keys: tuple[str, ...] | None = SEED_KEYS) -> Path:
    """Copy the data the tools read into ``target``; code folders are symlinked (read only)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "taxonomy", target / "taxonomy")
    shutil.copytree(ROOT / "tools", target / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "papers").mkdir()
    shutil.copy(ROOT / "papers" / "paper.schema.json", target / "papers")
    sources = sorted((ROOT / "papers").glob("*.yaml")) if paper_keys is None else [ROOT / "papers" / f"{key}.yaml" for key in paper_keys]
    for path in sources:
        shutil.copy(path, target / "papers")
    shutil.copy(ROOT / "mkdocs.yml", target)
    shutil.copy(ROOT / "CONTRIBUTING.md", target)
    (target / "docs").mkdir()
    for name in ("about.md", "contributing.md", "javascripts", "stylesheets", "overrides"):
        source = ROOT / "docs" / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target / "docs" / name)
    for name in ("reference_impls", "notebooks"):
        (target / name).symlink_to(ROOT / name, target_is_directory=True)
    return target


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def run_tools(capsys):
    """Run ``python -m tools`` in-process; returns (exit status, stdout, stderr)."""

    def run(root: Path, *arguments: str) -> tuple[int, str, str]:
        status = main(["--root", str(root), *arguments])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
