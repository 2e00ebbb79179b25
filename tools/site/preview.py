"""The preview of ``serve``: after an edit, regenerate only the pages that show what changed.

Three kinds of edit are taken in without reading the repository again:

- **paper entries** (``papers/*.yaml``): the edited entries are read and checked again (with the
  cross-entry checks against every entry), then :func:`pages_for_papers` names the pages that show
  them: their own pages, the pages whose related-papers lists change, the taxonomy pages they are
  (or were) placed under, the API and notebook pages of the modules that implement them, and the
  listings of every entry (all papers, what's new, feed, home, downloads);
- **findings** (a taxonomy file where only ``findings`` text changed): the pages of those nodes;
- **notebook renders** (``notebooks/_rendered/``): that notebook's page, images and the notebook index,
  as long as the render's recorded run time (shown in "Run it" boxes elsewhere) is unchanged.

Anything else (the taxonomy's structure, a notebook's source, results, code) regenerates everything,
as ``build`` does. Either way only files whose bytes changed are rewritten, so ``mkdocs``' dirty
build re-renders only those.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog import Catalog, Entry, load_catalog, reload_entries
from ..taxonomy import Node, load_taxonomy
from ..yamlio import YamlLoadError, load_yaml
from .build import (
    Sources,
    all_files,
    listing_files,
    module_files,
    node_files,
    notebook_files,
    notebooks_index_files,
    paper_files,
)
from .data import SiteData, paper_page
from .notebooks import render_seconds, rendered_dir

__all__ = ["Affected", "Preview", "pages_for_papers"]

Files = dict[str, str | bytes]


@dataclass
class Affected:
    """What an edit of some entries changes: papers by key, nodes by id, modules and notebooks."""

    papers: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    notebooks: set[str] = field(default_factory=set)


def _related_view(site: SiteData, entry: Entry) -> tuple[tuple[tuple[str, str, Any], ...], ...]:
    """What a paper page shows of its related papers: key, title and year of each, per list."""
    related = site.related.related(entry)
    return tuple(
        tuple((other.key, other.data["title"], other.data["year"]) for other in group)
        for group in (related.family, related.elsewhere)
    )


def _words(site: SiteData, entry: Entry) -> set[str]:
    index = site.related
    return index.words[index.position[id(entry)]]


def pages_for_papers(old: SiteData, new: SiteData, keys: set[str]) -> Affected:
    """The pages to regenerate when the entries ``keys`` changed (were edited, added or removed)
    between ``old`` and ``new``; both share one taxonomy. Pages of removed entries are not named
    (the caller deletes them)."""
    before, after = old.catalog.by_key(), new.catalog.by_key()
    affected = Affected(papers={key for key in keys if key in after})
    # Implementation links: an arXiv id, placement or ``implementation`` edit can move a module.
    links_old, links_new = old.graph.modules_of_entry, new.graph.modules_of_entry
    moved = {key for key in links_old.keys() | links_new.keys() if links_old.get(key) != links_new.get(key)}
    affected.papers |= moved & after.keys()
    # API pages name their paper by the module's card, not by the entry (see Graph.paper_label);
    # notebook pages show the paper's title.
    for key in moved:
        affected.modules.update(links_old.get(key, []) + links_new.get(key, []))
    for key in keys | moved:
        for module in links_old.get(key, []) + links_new.get(key, []):
            if module in new.graph.families_of_module:
                affected.notebooks.update(new.graph.notebooks_of_module(module))
    # Taxonomy pages above every placement, before and after (tables, counts, badges).
    versions = [entries[key] for key in keys | moved for entries in (before, after) if key in entries]
    for entry in versions:
        for node_id in entry.data["placement"]:
            node = new.taxonomy.by_id.get(node_id)
            if node is not None:
                affected.nodes.update(n.id for n in node.ancestors + [node])
    affected.nodes.update(topic.id for topic in new.taxonomy.topics if topic.source in keys)
    # Related papers. Adding or removing an entry changes every word's idf: every list is compared.
    # Otherwise a list can change only for an entry that shares a placement with an old or new
    # version of an edited entry (its family), a word whose idf changed (in one version's title,
    # not the other's), or a word rare enough to be indexed (the elsewhere-score with the entry).
    if before.keys() == after.keys():
        old_words = set().union(*(_words(old, before[key]) for key in keys))
        new_words = set().union(*(_words(new, after[key]) for key in keys))
        indexed = {
            word for word in old_words | new_words if word in old.related.postings or word in new.related.postings
        }
        words = (old_words ^ new_words) | indexed
        placed = {node_id for entry in versions for node_id in entry.data["placement"]}
        candidates = [
            entry
            for entry in new.entries
            if entry.key in keys or placed & set(entry.data["placement"]) or _words(new, entry) & words
        ]
    else:
        candidates = new.entries
    for entry in candidates:
        if entry.key in before and _related_view(old, before[entry.key]) != _related_view(new, entry):
            affected.papers.add(entry.key)
    return affected


def _without_findings(value: Any) -> Any:
    """A taxonomy file's data with every ``findings`` text left out (to compare the rest)."""
    if isinstance(value, dict):
        return {key: _without_findings(item) for key, item in value.items() if key != "findings"}
    if isinstance(value, list):
        return [_without_findings(item) for item in value]
    return value


class Preview:
    """The generated files of one repository, kept up to date edit by edit (see the module's docstring)."""

    def __init__(self, root: Path, *, execute_notebooks: bool = True):
        self.root = Path(root).resolve()
        self.execute_notebooks = execute_notebooks
        self.files: Files = {}
        self.catalog: Catalog | None = None

    def full(self) -> Files | None:
        """Validate and generate everything; None (with the problems printed) on any error, and
        then the next :meth:`update` asks for everything again too."""
        self.catalog = None
        catalog = load_catalog(self.root)
        if catalog.errors:
            _report(catalog)
            return None
        sources = Sources(self.root, self.execute_notebooks)
        site = sources.site(catalog)
        titles: dict[str, str] = {}
        owned: dict[str, set[str]] = {}
        try:
            files = all_files(site, sources, titles, owned)
        except ValueError as error:
            print(f"build: {error}; nothing was written", file=sys.stderr)
            return None
        self.catalog, self.sources, self.site, self.files = catalog, sources, site, files
        self.titles, self.owned = titles, owned
        self.seconds = {notebook: render_seconds(self.root, notebook) for notebook in sources.notebooks}
        return files

    def update(self, changed: set[Path]) -> tuple[Files, set[str]] | None:
        """Files to write and files to delete after ``changed`` paths (edited, added or deleted)
        changed; ``({}, set())`` when they are invalid (problems printed, nothing changes); None
        when the edit needs a full regeneration (:meth:`full`)."""
        if self.catalog is None:
            return None
        changed = {Path(path).absolute() for path in changed}
        kinds = {self._kind(path) for path in changed}
        if len(kinds) != 1:
            return None
        try:
            update = {"paper": self._papers, "taxonomy": self._findings, "render": self._renders}.get(kinds.pop())
            result = update(changed) if update is not None else None
        except ValueError as error:
            print(f"build: {error}; nothing was written", file=sys.stderr)
            return {}, set()
        if result is not None:
            files, removed = result
            self.files.update(files)
            for name in removed:
                self.files.pop(name, None)
        return result

    def _kind(self, path: Path) -> str:
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return "other"
        if parts[0] == "papers" and len(parts) == 2 and path.suffix == ".yaml":
            return "paper"
        if parts[0] == "taxonomy" and len(parts) == 2 and path.suffix == ".yaml":
            return "taxonomy"
        if parts[:2] == ("notebooks", "_rendered"):
            return "render"
        return "other"

    def _papers(self, paths: set[Path]) -> tuple[Files, set[str]] | None:
        old = self.site
        catalog = reload_entries(old.catalog, paths, self.sources.results)
        if catalog is None:
            return None
        if catalog.errors:
            _report(catalog)
            return {}, set()
        new = self.sources.site(catalog)
        keys = {entry.key for entry in old.catalog.entries + catalog.entries if entry.loaded.path in paths}
        affected = pages_for_papers(old, new, keys)
        by_key = catalog.by_key()
        files = paper_files(new, [by_key[key] for key in sorted(affected.papers)])
        files |= node_files(new, self.sources, [new.taxonomy.by_id[node_id] for node_id in sorted(affected.nodes)])
        files |= module_files(new, self.sources, sorted(affected.modules & self.sources.modules.keys()))
        files |= notebook_files(new, self.sources, sorted(affected.notebooks), self.titles, self.owned)
        files |= listing_files(new, self.sources)
        removed = {paper_page(key) for key in keys if key not in by_key}
        self.catalog, self.site = catalog, new
        return files, removed

    def _findings(self, paths: set[Path]) -> tuple[Files, set[str]] | None:
        taxonomy = self.site.taxonomy
        old_files = {loaded.path: loaded for loaded in taxonomy.files}
        if not paths <= old_files.keys():
            return None
        try:
            loaded = [load_yaml(path) if path in paths else old_files[path] for path in old_files]
        except (YamlLoadError, OSError, UnicodeDecodeError):
            return None  # the full load reports it with its line
        if any(_without_findings(new.data) != _without_findings(old_files[new.path].data) for new in loaded):
            return None
        fresh = load_taxonomy(self.root / "taxonomy", loaded)
        nodes: list[Node] = []
        for node in taxonomy.nodes():
            findings = fresh.by_id[node.id].findings
            if findings != node.findings:
                if not isinstance(findings, str):
                    return None  # the schema check of the full load says what is wrong
                nodes.append(node)
        previous = {node.id: node.findings for node in nodes}
        for node in nodes:
            node.findings = fresh.by_id[node.id].findings
        try:
            files = node_files(self.site, self.sources, nodes)
        except ValueError:
            for node in nodes:  # keep the state of the pages that are served
                node.findings = previous[node.id]
            raise
        taxonomy.files[:] = loaded
        return files, set()

    def _renders(self, paths: set[Path]) -> tuple[Files, set[str]] | None:
        notebooks = set()
        for path in paths:
            owner = [nb for nb in self.sources.notebooks if rendered_dir(self.root, nb) in path.parents]
            if not owner:
                return None
            notebooks.add(owner[0])
        if any(render_seconds(self.root, notebook) != self.seconds[notebook] for notebook in notebooks):
            return None  # the run time shows in "Run it" boxes on other pages
        files = notebook_files(self.site, self.sources, sorted(notebooks), self.titles, owned := {})
        files |= notebooks_index_files(self.site, self.sources, self.titles)
        removed = set().union(*(self.owned[notebook] - owned[notebook] for notebook in notebooks))
        self.owned |= owned
        return files, removed


def _report(catalog: Catalog) -> None:
    for problem in catalog.errors:
        print(problem, file=sys.stderr)
    print(f"build: {len(catalog.errors)} error(s); nothing was written", file=sys.stderr)
