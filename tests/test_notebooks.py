"""Every notebook runs as a plain script in its quick setting (ATLAS_QUICK=1)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tools.site.notebooks import discover_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = discover_notebooks(ROOT)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_in_quick_mode(notebook, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("ATLAS_QUICK", "1")
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / notebook), run_name="__main__")
    finally:
        plt.close("all")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_has_a_current_committed_render(notebook):
    # The site shows the committed render; it must come from this notebook and the code it imports.
    from tools.site.notebooks import render_notebook

    text, current = render_notebook(ROOT, notebook, execute=False)
    assert text and current, (
        f"{notebook}: rendered output missing or stale; run `python -m tools build` and commit notebooks/_rendered/"
    )
