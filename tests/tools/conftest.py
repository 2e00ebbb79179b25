"""Fixtures: a throw-away copy of the repository's data per test, and an in-process CLI runner."""

from __future__ import annotations

import os
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
    """Give a sandbox its own copy of reference_impls/results; returns the folder. The rest of
    reference_impls is rebuilt as real folders of linked files, so module discovery still sees it."""
    source = (repo / "reference_impls").resolve()
    (repo / "reference_impls").unlink()
    for folder, directories, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        directories[:] = [name for name in directories if name != "__pycache__" and relative / name != Path("results")]
        (repo / "reference_impls" / relative).mkdir(exist_ok=True)
        for name in files:
            (repo / "reference_impls" / relative / name).symlink_to(Path(folder) / name)
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
