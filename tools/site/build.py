"""``build`` and ``serve``: validate, generate every page into ``docs/`` atomically, run mkdocs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..bib import library_bibtex
from ..catalog import Catalog, Entry, load_catalog
from ..interrupts import deferred_interrupt
from ..results import load_all_results
from ..schema import results_schema, schema_text
from ..taxonomy import Node
from . import markdown as md
from .agreement import PAGE as AGREEMENT
from .agreement import agreement_md
from .allpapers import INDEX, all_papers_md, papers_index_json
from .allpapers import PAGE as ALL_PAPERS
from .changes import FEED, atom_feed, changes_md
from .changes import PAGE as CHANGES
from .charts import remember, remembered, stage_year_chart
from .data import SiteData, module_page, node_page, notebook_page, paper_page, relative
from .forked import Forked, worker_count
from .graph import Graph
from .history import History, load_history
from .implementations import discover_modules, families_by_module, implementations_index_md, module_md
from .notebooks import (
    discover_notebooks,
    notebook_md,
    notebook_source_files,
    notebook_title,
    notebooks_index_md,
    render_notebook,
    rendered_dir,
)
from .pages import home_md, node_md, paper_md, taxonomy_index_md
from .results import chart_styles, results_index_md, results_links_md, results_md

__all__ = ["GENERATED", "generate_pages", "build_site", "mkdocs_build", "write_changed", "mkdocs_environment"]

# Everything under docs/ that the build owns (git-ignored); the rest of docs/ is hand-written.
GENERATED = (
    "index.md",
    "tags.md",
    "all-papers.md",
    "changes.md",
    "feed.xml",
    "taxonomy",
    "papers",
    "implementations",
    "notebooks",
    "results",
    "references.bib",
    "papers.json",
    "schemas",
    "assets/generated",
)


@dataclass
class Sources:
    """What the pages are made of besides the catalog: read once per full generation, and kept by
    ``serve`` between edits of papers, findings and notebook renders (which do not change them)."""

    root: Path
    execute_notebooks: bool
    modules: dict[str, str] = field(init=False)
    notebooks: list[str] = field(init=False)
    results: list[dict[str, Any]] = field(init=False)
    history: History = field(init=False)

    def __post_init__(self) -> None:
        self.modules = discover_modules(self.root)
        self.notebooks = discover_notebooks(self.root)
        self.results = load_all_results(self.root)
        self.history = load_history(self.root)

    @cached_property
    def styles(self) -> dict[str, tuple[str, str]]:
        return chart_styles(self.results)

    def site(self, catalog: Catalog) -> SiteData:
        return SiteData(catalog, Graph(catalog, self.modules, self.notebooks, self.results), self.history)


def paper_files(site: SiteData, entries: Iterable[Entry]) -> dict[str, str | bytes]:
    return {paper_page(entry.key): paper_md(entry, site) for entry in entries}


def _node_results(node: Node, sources: Sources, assets: dict[str, str]) -> str:
    """The results a node's page shows (their charts go into ``assets``)."""
    page = node_page(node)
    ids = {n.id for n in node.descendants()}
    shown = [data for data in sources.results if ids & set(data["families"])]
    if node.children:
        # A topic or stage links to its families' results instead of repeating every table.
        return results_links_md(node, shown, page)
    return "\n".join(
        results_md(data, page, assets, family=node.id, indexed=False, styles=sources.styles) for data in shown
    )


def node_files(site: SiteData, sources: Sources, nodes: Iterable[Node]) -> dict[str, str | bytes]:
    """Taxonomy node pages, with the charts of the results they show."""
    files: dict[str, str | bytes] = {}
    assets: dict[str, str] = {}
    for node in nodes:
        files[node_page(node)] = node_md(node, site, sources.modules, _node_results(node, sources, assets))
    return files | assets


def _draw_charts(site: SiteData, sources: Sources) -> dict[str, str]:
    """Every results chart of the node pages and the results index (:func:`all_files` has a forked
    child draw them while it writes the other pages); returns them as :func:`remembered` does."""
    for node in site.taxonomy.nodes():
        _node_results(node, sources, {})
    results_index_md(sources.results, {})
    return remembered()


def module_files(site: SiteData, sources: Sources, modules: Iterable[str]) -> dict[str, str | bytes]:
    module_families = families_by_module(site.taxonomy)
    return {
        module_page(module): module_md(module, sources.modules[module], module_families.get(module, []), site)
        for module in modules
    }


def _notebook_families(site: SiteData) -> dict[str, list[str]]:
    """Notebook -> links (from its page) to the families that show it."""
    families_of: dict[str, list[str]] = {}
    for node in site.taxonomy.nodes():
        for notebook in node.notebooks:
            families_of.setdefault(notebook, []).append(
                md.link(md.text(node.name), relative(notebook_page(notebook), node_page(node)))
            )
    return families_of


def notebook_files(
    site: SiteData,
    sources: Sources,
    notebooks: Iterable[str],
    titles: dict[str, str],
    owned: dict[str, set[str]] | None = None,
) -> dict[str, str | bytes]:
    """Each notebook's page, its ``.py`` and ``.ipynb`` downloads and its rendered images; records
    each notebook's title in ``titles`` and (with ``owned``) the names of its files."""
    root, files = sources.root, {}
    families_of = _notebook_families(site)
    for notebook in notebooks:
        body, current = render_notebook(root, notebook, execute=sources.execute_notebooks)
        mine: dict[str, str | bytes] = {
            notebook_page(notebook): notebook_md(notebook, body, current, families_of.get(notebook, []), site)
        }
        mine.update(notebook_source_files(root, notebook))
        titles[notebook] = notebook_title(notebook, body)
        images = rendered_dir(root, notebook)
        for image in images.rglob("*") if images.is_dir() else ():
            if image.is_file() and image.name != "index.md":
                mine[str(Path(notebook_page(notebook)).parent / image.relative_to(images))] = image.read_bytes()
        if owned is not None:
            owned[notebook] = set(mine)
        files |= mine
    return files


def notebooks_index_files(site: SiteData, sources: Sources, titles: dict[str, str]) -> dict[str, str | bytes]:
    index_families = {
        notebook: [link.replace("../", "", 1) for link in links] for notebook, links in _notebook_families(site).items()
    }
    return {"notebooks/index.md": notebooks_index_md(sources.notebooks, index_families, titles)}


def listing_files(site: SiteData, sources: Sources) -> dict[str, str | bytes]:
    """The pages and downloads that list or count every entry (regenerated on any entry change)."""
    catalog, taxonomy = site.catalog, site.taxonomy
    files: dict[str, str | bytes] = {
        ALL_PAPERS: all_papers_md(site),
        CHANGES: changes_md(site),
        FEED: atom_feed(site, site.site_url),
        INDEX: papers_index_json(site),
        AGREEMENT: agreement_md(catalog.entries, sources.results),
        "taxonomy/index.md": taxonomy_index_md(site),
    }
    by_stage = Counter((site.stage_of(entry), entry.data["year"]) for entry in site.entries)
    stages = list(
        dict.fromkeys(site.stage_of(entry) for entry in sorted(site.entries, key=lambda e: e.data["placement"][0]))
    )
    chart = "assets/generated/papers-by-year.svg"
    files[chart] = stage_year_chart(by_stage, sorted(stages))
    counts = {
        "papers": len(catalog.entries),
        "method families": sum(1 for node in taxonomy.nodes() if node.is_leaf_method),
        "with a reference implementation": sum(
            1 for node in taxonomy.nodes() if node.is_leaf_method and node.implementations
        ),
        "implementation modules": len(sources.modules),
        "notebooks": len(sources.notebooks),
    }
    files["index.md"] = home_md(site, counts, chart)
    files["references.bib"] = library_bibtex(entry.data for entry in catalog.entries)
    files["papers.json"] = (
        json.dumps(
            [entry.data for entry in sorted(catalog.entries, key=lambda e: e.key)],
            indent=1,
            ensure_ascii=False,
            default=str,
            allow_nan=False,
        )
        + "\n"
    )
    return files


def _fixed_files(site: SiteData, sources: Sources) -> dict[str, str | bytes]:
    """Pages that do not depend on the entries."""
    assets: dict[str, str] = {}
    files: dict[str, str | bytes] = {
        "implementations/index.md": implementations_index_md(sources.modules, site.taxonomy),
        "results/index.md": results_index_md(sources.results, assets),
        "tags.md": md.front_matter(title="Tags") + "# Tags\n\n<!-- material/tags -->\n",
        "schemas/paper.schema.json": schema_text(site.taxonomy),
        "schemas/results.schema.json": json.dumps(results_schema(), indent=2, ensure_ascii=False) + "\n",
        "schemas/taxonomy.schema.json": (sources.root / "taxonomy" / "taxonomy.schema.json").read_text(
            encoding="utf-8"
        ),
    }
    return files | assets


def all_files(
    site: SiteData,
    sources: Sources,
    titles: dict[str, str],
    owned: dict[str, set[str]] | None = None,
    *,
    workers: int = 1,
) -> dict[str, str | bytes]:
    """Every generated file; records each notebook's title and files (see :func:`notebook_files`).
    With ``workers`` 2, a forked child draws the results charts and writes the second half of the
    paper pages meanwhile (the same files; made here after all if the child fails)."""
    entries = site.catalog.entries
    half = len(entries) // 2 if workers >= 2 else len(entries)
    child = None
    if half < len(entries):
        child = Forked(lambda: (_draw_charts(site, sources), paper_files(site, entries[half:])))
    first = paper_files(site, entries[:half])
    modules = module_files(site, sources, sources.modules)
    notebooks = notebook_files(site, sources, sources.notebooks, titles, owned)
    notebooks |= notebooks_index_files(site, sources, titles)
    listing = listing_files(site, sources)
    second: dict[str, str | bytes] = {}
    if child is not None:
        charts, papers = child.result() or ({}, None)
        remember(charts)
        second = papers if papers is not None else paper_files(site, entries[half:])
    files = first | second | modules | node_files(site, sources, site.taxonomy.nodes()) | notebooks | listing
    return files | _fixed_files(site, sources)


def _pages(catalog: Catalog, root: Path, execute_notebooks: bool, workers: int) -> dict[str, str | bytes]:
    sources = Sources(root, execute_notebooks)
    return all_files(sources.site(catalog), sources, {}, workers=workers)


def write_changed(root: Path, docs_dir: Path, files: dict[str, str | bytes], removed: set[str] | None = None) -> int:
    """Write only the files whose bytes changed (each by one rename) and delete ``removed`` (by
    default: every generated file no longer produced); returns how many files changed. Unchanged
    files keep their modification time, which is how mkdocs' dirty build knows what to rebuild."""
    scratch = root / ".cache" / "docs-incremental"
    scratch.mkdir(parents=True, exist_ok=True)
    changed = 0
    with deferred_interrupt():  # Ctrl-C waits for the last rename
        for name, content in files.items():
            data = content if isinstance(content, bytes) else content.encode("utf-8")
            path = docs_dir / name
            try:
                if path.read_bytes() == data:
                    continue
            except OSError:
                pass
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = scratch / "next"
            temporary.write_bytes(data)
            os.replace(temporary, path)
            changed += 1
        if removed is None:
            wanted = {docs_dir / name for name in files}
            stale = []
            for name in GENERATED:
                target = docs_dir / name
                stale += [target] if target.is_file() else sorted(target.rglob("*")) if target.is_dir() else []
            doomed = [path for path in stale if path.is_file() and path not in wanted]
        else:
            doomed = [docs_dir / name for name in sorted(removed) if (docs_dir / name).is_file()]
        for path in doomed:
            path.unlink()
            changed += 1
    return changed


def generate_pages(
    root: Path,
    *,
    execute_notebooks: bool = True,
    docs_dir: Path | None = None,
    incremental: bool = False,
    workers: int | None = None,
) -> int:
    """Validate, then write every generated page into ``docs/``; on any error write nothing.

    By default each generated part of ``docs/`` is swapped whole; ``incremental`` (for ``serve``)
    rewrites only the files that changed instead. ``workers`` (by default as many as
    :func:`~tools.site.forked.worker_count` allows) 2: the results charts are drawn in a second process."""
    docs_dir = docs_dir or root / "docs"
    catalog = load_catalog(root)
    if catalog.errors:
        for problem in catalog.errors:
            print(problem, file=sys.stderr)
        print(f"build: {len(catalog.errors)} error(s); nothing was written", file=sys.stderr)
        return 1
    try:
        files = _pages(catalog, root, execute_notebooks, worker_count() if workers is None else workers)
    except ValueError as error:
        print(f"build: {error}; nothing was written", file=sys.stderr)
        return 1
    if incremental:
        changed = write_changed(root, docs_dir, files)
        print(f"build: {changed} of {len(files)} generated files changed", flush=True)
        return 0
    staging, previous = root / ".cache" / "docs-staging", root / ".cache" / "docs-previous"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)
    for name, content in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    # Everything is built aside; now each generated part is swapped in by renames only (no
    # deletion inside docs/), with Ctrl-C held back until the last rename: docs/ never holds a
    # half-written part or a mix of two builds. The old parts are deleted afterwards.
    with deferred_interrupt():
        for name in GENERATED:
            target, source = docs_dir / name, staging / name
            if target.exists() or target.is_symlink():
                (previous / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, previous / name)
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"build: generated {len(files)} files for {len(catalog.entries)} papers")
    return 0


def _mkdocs(root: Path, *arguments: str) -> list[str]:
    # mkdocs' command line with one Markdown converter for all pages (same site, faster; see converter.py).
    return [sys.executable, "-m", "tools.site.converter", *arguments, "-f", str(root / "mkdocs.yml")]


def mkdocs_environment() -> dict[str, str]:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def mkdocs_build(root: Path, site_dir: Path | None = None) -> int:
    """``mkdocs build --strict`` of the pages already generated in ``docs/`` (run by
    :mod:`tools.site.converter`, which renders the same site faster)."""
    site_dir = site_dir or root / "site"
    result = subprocess.run(_mkdocs(root, "build", "--strict", "-d", str(site_dir)), cwd=root, env=mkdocs_environment())
    if result.returncode:
        print("build: mkdocs build --strict failed (see above)", file=sys.stderr)
    return result.returncode


def build_site(
    root: Path, *, run_mkdocs: bool = True, execute_notebooks: bool = True, site_dir: Path | None = None
) -> int:
    status = generate_pages(root, execute_notebooks=execute_notebooks)
    if status or not run_mkdocs:
        return status
    return mkdocs_build(root, site_dir)
