"""``build`` and ``serve``: validate, generate every page into ``docs/`` atomically, run mkdocs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ..bib import entries_to_bibtex
from ..catalog import Catalog, load_catalog
from ..interrupts import deferred_interrupt
from ..schema import results_schema, schema_text
from . import markdown as md
from .charts import stage_year_chart
from .agreement import PAGE as AGREEMENT, agreement_md
from .allpapers import INDEX, PAGE as ALL_PAPERS, all_papers_md, papers_index_json
from .data import SiteData, module_page, node_page, notebook_page, paper_page, relative
from .implementations import discover_modules, families_by_module, implementations_index_md, module_md
from .notebooks import (discover_notebooks, notebook_md, notebook_source_files, notebook_title, notebooks_index_md,
                        render_notebook, rendered_dir)
from .graph import Graph
from .pages import home_md, node_md, paper_md, taxonomy_index_md
from ..results import load_all_results
from .results import chart_styles, results_index_md, results_links_md, results_md

__all__ = ["GENERATED", "generate_pages", "build_site", "serve_site"]

# Everything under docs/ that the build owns (git-ignored); the rest of docs/ is hand-written.
GENERATED = ("index.md", "tags.md", "all-papers.md", "taxonomy", "papers", "implementations", "notebooks", "results",
             "references.bib", "papers.json", "schemas", "assets/generated")


def _pages(catalog: Catalog, root: Path, execute_notebooks: bool) -> dict[str, str | bytes]:
    taxonomy = catalog.taxonomy
    modules = discover_modules(root)
    notebooks = discover_notebooks(root)
    all_results = load_all_results(root)
    site = SiteData(catalog, Graph(catalog, modules, notebooks, all_results))
    files: dict[str, str | bytes] = {}
    assets: dict[str, str] = {}

    for entry in catalog.entries:
        files[paper_page(entry.key)] = paper_md(entry, site)
    files[ALL_PAPERS] = all_papers_md(site)
    files[INDEX] = papers_index_json(site)

    module_families = families_by_module(taxonomy)
    for module, summary in modules.items():
        files[module_page(module)] = module_md(module, summary, module_families.get(module, []), site)
    files["implementations/index.md"] = implementations_index_md(modules, taxonomy)

    styles = chart_styles(all_results)
    for node in taxonomy.nodes():
        page = node_page(node)
        ids = {n.id for n in node.descendants()}
        shown = [data for data in all_results if ids & set(data["families"])]
        if node.children:
            # A topic or stage links to its families' results instead of repeating every table.
            results_text = results_links_md(node, shown, page)
        else:
            results_text = "\n".join(results_md(data, page, assets, family=node.id, indexed=False, styles=styles)
                                     for data in shown)
        files[page] = node_md(node, site, modules, results_text)
    files["results/index.md"] = results_index_md(all_results, assets)
    files[AGREEMENT] = agreement_md(catalog.entries, all_results)
    files["taxonomy/index.md"] = taxonomy_index_md(site)

    families_of: dict[str, list[str]] = {}
    for node in taxonomy.nodes():
        for notebook in node.notebooks:
            families_of.setdefault(notebook, []).append(md.link(md.text(node.name), relative(notebook_page(notebook), node_page(node))))
    titles: dict[str, str] = {}
    for notebook in notebooks:
        body, current = render_notebook(root, notebook, execute=execute_notebooks)
        files[notebook_page(notebook)] = notebook_md(notebook, body, current, families_of.get(notebook, []), site)
        files.update(notebook_source_files(root, notebook))
        titles[notebook] = notebook_title(notebook, body)
        images = rendered_dir(root, notebook)
        for image in images.rglob("*") if images.is_dir() else ():
            if image.is_file() and image.name != "index.md":
                files[str(Path(notebook_page(notebook)).parent / image.relative_to(images))] = image.read_bytes()
    index_families = {notebook: [link.replace("../", "", 1) for link in links] for notebook, links in families_of.items()}
    files["notebooks/index.md"] = notebooks_index_md(notebooks, index_families, titles)

    by_stage = Counter((site.stage_of(entry), entry.data["year"]) for entry in site.entries)
    stages = list(dict.fromkeys(site.stage_of(entry) for entry in sorted(site.entries, key=lambda e: e.data["placement"][0])))
    chart = "assets/generated/papers-by-year.svg"
    assets[chart] = stage_year_chart(by_stage, sorted(stages))
    counts = {
        "papers": len(catalog.entries),
        "method families": sum(1 for node in taxonomy.nodes() if node.is_leaf_method),
        "with a reference implementation": sum(1 for node in taxonomy.nodes() if node.is_leaf_method and node.implementations),
        "implementation modules": len(modules),
        "notebooks": len(notebooks),
    }
    files["index.md"] = home_md(site, counts, chart)
    files["tags.md"] = md.front_matter(title="Tags") + "# Tags\n\n<!-- material/tags -->\n"
    files["references.bib"] = entries_to_bibtex(entry.data for entry in catalog.entries)
    files["papers.json"] = json.dumps([entry.data for entry in sorted(catalog.entries, key=lambda e: e.key)],
                                      indent=1, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    files["schemas/paper.schema.json"] = schema_text(taxonomy)
    files["schemas/results.schema.json"] = json.dumps(results_schema(), indent=2, ensure_ascii=False) + "\n"
    files["schemas/taxonomy.schema.json"] = (root / "taxonomy" / "taxonomy.schema.json").read_text(encoding="utf-8")
    files.update(assets)
    return files


def generate_pages(root: Path, *, execute_notebooks: bool = True, docs_dir: Path | None = None) -> int:
    """Validate, then write every generated page into ``docs/``; on any error write nothing."""
    docs_dir = docs_dir or root / "docs"
    catalog = load_catalog(root)
    if catalog.errors:
        for problem in catalog.errors:
            print(problem, file=sys.stderr)
        print(f"build: {len(catalog.errors)} error(s); nothing was written", file=sys.stderr)
        return 1
    try:
        files = _pages(catalog, root, execute_notebooks)
    except ValueError as error:
        print(f"build: {error}; nothing was written", file=sys.stderr)
        return 1
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
    return [sys.executable, "-m", "mkdocs", *arguments, "-f", str(root / "mkdocs.yml")]


def _environment() -> dict[str, str]:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def build_site(root: Path, *, run_mkdocs: bool = True, execute_notebooks: bool = True, site_dir: Path | None = None) -> int:
    status = generate_pages(root, execute_notebooks=execute_notebooks)
    if status or not run_mkdocs:
        return status
    site_dir = site_dir or root / "site"
    result = subprocess.run(_mkdocs(root, "build", "--strict", "-d", str(site_dir)), cwd=root, env=_environment())
    if result.returncode:
        print("build: mkdocs build --strict failed (see above)", file=sys.stderr)
    return result.returncode


def _snapshot(root: Path) -> dict[str, float]:
    watched = {}
    for folder, pattern in (("papers", "*.yaml"), ("taxonomy", "*"), ("notebooks", "*.py"), ("reference_impls/results", "*.json")):
        for path in (root / folder).rglob(pattern):
            if path.is_file():
                watched[str(path)] = path.stat().st_mtime
    return watched


def serve_site(root: Path, *, address: str = "127.0.0.1:8000", execute_notebooks: bool = True) -> int:
    """Generate, then let ``mkdocs serve --strict`` build and serve with live reload; regenerate the
    pages when papers, taxonomy, notebooks or results change."""
    status = generate_pages(root, execute_notebooks=execute_notebooks)
    if status:
        return status
    server = subprocess.Popen(_mkdocs(root, "serve", "--strict", "-a", address), cwd=root, env=_environment())
    print(f"serving on http://{address}/ (Ctrl+C stops)", flush=True)
    seen = _snapshot(root)
    try:
        while server.poll() is None:
            time.sleep(1.0)
            now = _snapshot(root)
            if now != seen:
                seen = now
                generate_pages(root, execute_notebooks=execute_notebooks)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0
