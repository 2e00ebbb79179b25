"""Fixtures: a throw-away copy of the repository's data per test, and an in-process CLI runner."""

from __future__ import annotations

import json
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


# A quoted summary is data too: it must not open a block, a snippet or raw HTML on the paper page.
HOSTILE_SUMMARY = 'We quote.\r\r??? note\r    hidden\n\n--8<-- "mkdocs.yml"\n<script>alert(4)</script> > end'

# A carriage return used to start a Markdown block (here: the API and source of tools.sandbox). A title
# holding one is refused by validate (its spacing is not the tidied form), so the venue and an alias carry it.
CR_TITLE = "X\r\r::: tools.sandbox\r\r??? note\r    hidden"
CR_EVIL = (
    GOOD_ENTRY.replace("good2026entry", "cr2026entry")
    .replace("2611.00001", "2611.00067")
    .replace("A Perfectly Good Entry", "A Carriage Return Entry")
    .replace("venue: arXiv", f"venue: {json.dumps(CR_TITLE)}")
    .replace("authors:", f"summary: {json.dumps(HOSTILE_SUMMARY)}\naliases:\n- {json.dumps(CR_TITLE)}\nauthors:")
)
HOSTILE_PROSE = 'Found *this*.\r\r::: tools.sandbox\n\n--8<-- "mkdocs.yml"\n\n<script>alert(2)</script>'
HOSTILE_COMMAND = "python -m reference_impls.bench.tokens --tag '`--8<-- \"mkdocs.yml\"`' <script>alert(3)</script>"

EVIL = (
    GOOD_ENTRY.replace("good2026entry", "evil2026entry")
    .replace("2611.00001", "2611.00066")
    .replace(
        "A Perfectly Good Entry About Visual Token Pruning",
        "'<script>alert(1)</script> *bold* | pipe [link](javascript:x)'",
    )
)


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


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The whole site from every entry plus hostile data, built once per test session (notebooks
    not executed); test_site.py and the browser tests read it."""
    from tools.site.build import build_site

    repo = make_repo(tmp_path_factory.mktemp("site") / "repo", paper_keys=None)
    (repo / "papers" / "evil2026entry.yaml").write_text(EVIL)
    (repo / "papers" / "cr2026entry.yaml").write_text(CR_EVIL)
    taxonomy = repo / "taxonomy" / "efficiency.yaml"
    text = taxonomy.read_text()
    start = text.index("            findings: >-\n", text.index("- id: prefilling-attention-guided"))
    # The folded block ends at the first line indented less than its text (the next field or node).
    end = start + len("            findings: >-\n")
    while text[end:].startswith(" " * 14) or text[end:].startswith("\n"):
        end = text.index("\n", end) + 1
    taxonomy.write_text(text[:start] + f"            findings: {json.dumps(HOSTILE_PROSE)}\n" + text[end:])
    results = own_results(repo)
    data = json.loads((results / "tokens-toyvlm.json").read_text())
    data.update(command=HOSTILE_COMMAND, notes=HOSTILE_PROSE, title="Tokens\r\r::: tools.sandbox")
    data["columns"][0]["label"] = "Method\r\r??? note\r    hidden"
    (results / "tokens-toyvlm.json").write_text(json.dumps(data))
    assert build_site(repo, execute_notebooks=False) == 0
    return repo
