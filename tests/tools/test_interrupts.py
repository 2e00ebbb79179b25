"""Ctrl-C and failures during a build: one clean line, a non-zero exit, and docs/ either the old
build or the new one, never a half-swapped part."""

from __future__ import annotations

import os
import signal

import nbclient
import pytest

from tools.site import build, results
from tools.site.build import GENERATED, generate_pages
from tools.site.notebooks import discover_notebooks, notebook_hash, rendered_dir

from .conftest import GOOD_ENTRY, own_notebooks


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    """The charts take most of a build's time and play no part here."""
    monkeypatch.setattr(results, "results_chart", lambda *args, **kwargs: "<svg/>")
    monkeypatch.setattr(build, "stage_year_chart", lambda *args, **kwargs: "<svg/>")


def test_ctrl_c_during_the_swap_waits_until_every_part_is_in(repo, monkeypatch):
    assert generate_pages(repo, execute_notebooks=False) == 0
    (repo / "papers" / "good2026entry.yaml").write_text(GOOD_ENTRY)
    renames = []
    real_replace = os.replace

    def interrupted_replace(source, target):
        if not renames:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the swap started
        renames.append(target)
        real_replace(source, target)

    monkeypatch.setattr(build.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        generate_pages(repo, execute_notebooks=False)
    assert len(renames) > len(GENERATED)  # every old part moved aside and every new part moved in
    papers = sorted(path.stem for path in (repo / "docs" / "papers").glob("*.md"))
    assert papers == sorted(path.stem for path in (repo / "papers").glob("*.yaml"))
    assert "good2026entry" in papers  # the new build, complete
    assert [name for name in GENERATED if not (repo / "docs" / name).exists()] == []


def stale_notebook(repo):
    """Make kivi's render stale and every other render current (whatever their state in the
    checkout), so that kivi is the one notebook the build executes."""
    own_notebooks(repo)
    for other in discover_notebooks(repo):
        index = rendered_dir(repo, other) / "index.md"
        if index.is_file():
            body = index.read_text(encoding="utf-8").split("\n", 1)[1]
            index.write_text(f"<!-- atlas-notebook-hash: {notebook_hash(repo, other)} -->\n{body}", encoding="utf-8")
    notebook = repo / "notebooks" / "decoding" / "kivi.py"
    notebook.write_text(notebook.read_text() + "\n# edited\n")
    return notebook


def test_ctrl_c_while_a_notebook_runs_ends_in_one_line(repo, run_tools, monkeypatch):
    stale_notebook(repo)

    def execute(self, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the kernel gets it too and dies first ...
        except KeyboardInterrupt:
            raise nbclient.exceptions.DeadKernelError("Kernel died") from None  # ... so nbclient reports that

    monkeypatch.setattr(nbclient.NotebookClient, "execute", execute)
    before = sorted(path.name for path in (repo / "docs").iterdir())
    status, out, err = run_tools(repo, "build", "--no-mkdocs")
    assert status == 130
    assert err.strip().splitlines()[-1] == "python -m tools build: interrupted; nothing was left half-written"
    assert "Traceback" not in err and "DeadKernelError" not in err
    assert sorted(path.name for path in (repo / "docs").iterdir()) == before


def test_a_failing_notebook_is_named_without_a_traceback(repo, run_tools, monkeypatch):
    stale_notebook(repo)

    def execute(self, **kwargs):
        raise nbclient.exceptions.CellExecutionError("Traceback ...\nZeroDivisionError: division by zero", "", "")

    monkeypatch.setattr(nbclient.NotebookClient, "execute", execute)
    status, out, err = run_tools(repo, "build", "--no-mkdocs")
    assert status == 1
    assert (
        "build: notebooks/decoding/kivi.py: execution failed: ZeroDivisionError: division by zero; nothing was written"
    ) in err, err
