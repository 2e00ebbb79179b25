"""Fixtures: a throw-away copy of the repository's data per test, and an in-process CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.__main__ import main
from tools.sandbox import make_sandbox

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
    return make_sandbox(target, paper_keys)


def own_results(repo: Path) -> Path:
    """Give a sandbox its own copy of reference_impls/results (the rest stays linked); returns the folder."""
    source = (repo / "reference_impls").resolve()
    (repo / "reference_impls").unlink()
    (repo / "reference_impls").mkdir()
    for child in source.iterdir():
        if child.name != "results":
            (repo / "reference_impls" / child.name).symlink_to(child, target_is_directory=child.is_dir())
    shutil.copytree(source / "results", repo / "reference_impls" / "results")
    return repo / "reference_impls" / "results"


def own_notebooks(repo: Path) -> Path:
    """Give a sandbox its own copy of notebooks/ (instead of the link to the checkout); returns it."""
    source = (repo / "notebooks").resolve()
    (repo / "notebooks").unlink()
    shutil.copytree(source, repo / "notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    return repo / "notebooks"


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
