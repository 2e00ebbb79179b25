"""A second process (tools/site/forked.py) changes how fast a build is, never what it builds: the
generated pages with the charts drawn by a child, by this process, or by this process after the
child failed are the same; so is the site mkdocs builds from two processes (tools/site/page_workers.py),
from one, and from two whose worker dies at once, file by file; a warning raised by a page the
worker took is shown (and counted) by the parent; one core means one process."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from tools.bench_site import synthetic_entry
from tools.catalog import load_catalog
from tools.entries import write_entries
from tools.site import build as build_module
from tools.site import charts
from tools.site import page_workers as workers_module
from tools.site.build import generate_pages
from tools.site.converter import one_converter
from tools.site.forked import worker_count
from tools.site.page_workers import LAST_BUILD, page_workers

from .conftest import EVIL, make_repo

# A hand-written page whose links fail: mkdocs warns while rendering it (the missing page) and after
# every page is rendered (the missing anchor). It is the last page, the first the worker takes.
BROKEN = "# Broken\n\nSee [nothing](missing.md) and [no anchor](../about.md#no-such-anchor).\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated catalogue: the seed papers, 40 synthetic ones, hostile text, a broken page."""
    repo = make_repo(tmp_path_factory.mktemp("workers") / "repo")
    (repo / "papers" / "evil2026entry.yaml").write_text(EVIL)
    node_ids = sorted(load_catalog(repo).taxonomy.by_id)
    rng = random.Random(1)
    write_entries(repo / "papers", [synthetic_entry(index, node_ids, rng) for index in range(40)])
    assert generate_pages(repo, execute_notebooks=False) == 0
    (repo / "docs" / "zz").mkdir()
    (repo / "docs" / "zz" / "broken.md").write_text(BROKEN)  # the last folder mkdocs walks
    return repo


def test_charts_drawn_by_a_child_make_the_same_pages(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn, papers = [], []
    svg, paper_md = charts._svg, build_module.paper_md
    monkeypatch.setattr(charts, "_svg", lambda figure: drawn.append(1) or svg(figure))
    monkeypatch.setattr(build_module, "paper_md", lambda entry, site: papers.append(1) or paper_md(entry, site))

    def generate(name: str, workers: int) -> dict[str, bytes]:
        charts._MADE.clear()  # charts are remembered in-process: draw each time
        drawn.clear()
        papers.clear()
        assert generate_pages(repo, execute_notebooks=False, docs_dir=tmp_path / name, workers=workers) == 0
        return _files(tmp_path / name)

    serial = generate("serial", 1)
    drawn_here, papers_here = len(drawn), len(papers)
    assert drawn_here > 5 and any(name.endswith(".svg") for name in serial) and papers_here > 40
    assert generate("parallel", 2) == serial
    assert len(drawn) == 1  # only the papers-by-year chart: the child drew the results charts ...
    assert len(papers) == papers_here // 2  # ... and wrote half of the paper pages

    def failing(*args: object) -> dict[str, str]:
        raise RuntimeError("the child fails")

    monkeypatch.setattr(build_module, "_draw_charts", failing)
    assert generate("failed", 2) == serial
    assert len(drawn) == drawn_here and len(papers) == papers_here  # this process made them after all


def _build(repo: Path, site: Path, workers: int, caplog: pytest.LogCaptureFixture) -> list[str]:
    """A non-strict build of ``repo`` into ``site`` in this process; the warnings it logged."""
    from mkdocs.commands import build as build_module
    from mkdocs.config import load_config

    caplog.clear()
    config = load_config(config_file=str(repo / "mkdocs.yml"), site_dir=str(site), strict=False)
    with caplog.at_level(logging.INFO), one_converter(), page_workers(workers):
        build_module.build(config)
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def _files(site: Path) -> dict[str, bytes]:
    return {str(path.relative_to(site)): path.read_bytes() for path in sorted(site.rglob("*")) if path.is_file()}


def test_two_processes_build_the_serial_site(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(repo)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the sitemap's date
    serial_warnings = _build(repo, tmp_path / "serial", 1, caplog)
    assert LAST_BUILD["workers"] == 1
    parallel_warnings = _build(repo, tmp_path / "parallel", 2, caplog)
    pages, rendered, built = LAST_BUILD["pages"], LAST_BUILD["worker_pages"], LAST_BUILD["worker_built"]
    assert LAST_BUILD["workers"] == 2 and 0 < rendered < pages and 0 < built < pages  # both processes did pages

    def dying(*args: object) -> None:
        os._exit(3)

    monkeypatch.setattr(workers_module, "_child", dying)
    dead_warnings = _build(repo, tmp_path / "dead", 2, caplog)
    assert LAST_BUILD["worker_pages"] == LAST_BUILD["worker_built"] == 0  # the parent did every page itself

    serial = _files(tmp_path / "serial")
    assert len(serial) > 100 and any(name.startswith("papers/synthetic") for name in serial)
    assert b"synthetic" in serial["search/search_index.json"]
    for name in ("parallel", "dead"):
        built = _files(tmp_path / name)
        assert built.keys() == serial.keys(), name
        assert [file for file in serial if built[file] != serial[file]] == [], name
    # The broken page's warnings are the parent's, once each, whoever rendered the page's neighbours.
    assert any("missing.md" in message for message in serial_warnings)
    assert any("no-such-anchor" in message for message in serial_warnings)
    assert parallel_warnings == serial_warnings and dead_warnings == serial_warnings


def test_one_core_or_the_variable_means_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mkdocs.commands import build as build_module
    from mkdocs.structure.pages import Page

    monkeypatch.delenv("ATLAS_SITE_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    # no other thread (the thread rule has its own test; an earlier test may leave one running)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert worker_count() == 2
    monkeypatch.setenv("ATLAS_SITE_WORKERS", "1")
    assert worker_count() == 1
    monkeypatch.delenv("ATLAS_SITE_WORKERS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert worker_count() == 1
    render, build = Page.render, build_module.build
    with page_workers():
        assert Page.render is render and build_module.build is build  # mkdocs' own serial build
    with page_workers(2):
        assert Page.render is not render
    assert Page.render is render and build_module.build is build


def test_pages_are_built_by_the_parent_alone_when_another_plugin_hooks_them() -> None:
    """The worker's files are only the parent's when every per-page hook's effect is replayed."""

    class SearchPlugin:
        def __init__(self) -> None:
            self.search_index = type("Index", (), {"entries": []})()

        def on_page_context(self) -> None: ...

    class OtherPlugin:
        def on_post_page(self) -> None: ...

    class Plugins(dict):
        events: dict[str, list] = {}

    search = SearchPlugin()
    plugins = Plugins({"material/search": search})
    plugins.events = {"page_context": [search.on_page_context], "post_page": []}
    config = type("Config", (), {"plugins": plugins})()
    assert workers_module._search_entries(config) is search.search_index.entries
    plugins.events["post_page"].append(OtherPlugin().on_post_page)
    assert workers_module._search_entries(config) is None


def test_a_process_running_threads_stays_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` runs threads: a child forked from it could start with a lock another thread held."""
    import threading

    monkeypatch.delenv("ATLAS_SITE_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert worker_count() == 1
    finally:
        stop.set()
        thread.join()
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # as if no test had left a thread running
    assert worker_count() == 2
