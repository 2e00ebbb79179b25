"""Indexes over the validated catalog that the pages need: papers per node, URLs of every page."""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import Catalog, Entry
from ..nav import node_page
from ..taxonomy import Node
from . import markdown as md

if TYPE_CHECKING:
    from .graph import Graph
    from .history import History
    from .related import RelatedIndex

__all__ = ["SiteData", "node_page", "paper_page", "module_page", "notebook_page"]


def paper_page(key: str) -> str:
    return f"papers/{key}.md"


def module_page(module: str) -> str:
    return f"implementations/{module}.md"


def notebook_page(notebook: str) -> str:
    """``notebooks/decoding/hybridkv.py`` -> ``notebooks/decoding/hybridkv.md``."""
    return str(Path(notebook).with_suffix(".md"))


def relative(from_page: str, to_page: str) -> str:
    """Relative link between two docs-relative page paths (mkdocs resolves .md links)."""
    from_dir = Path(from_page).parent
    up = len(from_dir.parts)
    return "../" * up + to_page if up else to_page


_CONFIGS: dict[tuple[str, int], dict] = {}


def _config_url(root: Path, key: str) -> str:
    """An https URL of ``mkdocs.yml`` (``repo_url``, ``site_url``) without its trailing slash, or ""."""
    import yaml

    path = root / "mkdocs.yml"
    try:
        version = (str(path), path.stat().st_mtime_ns)
        if version not in _CONFIGS:  # read once per version: ``serve`` makes a SiteData per edit
            _CONFIGS[version] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        config = _CONFIGS[version]
    except (OSError, yaml.YAMLError):
        return ""
    url = str(config.get(key) or "").rstrip("/") if isinstance(config, dict) else ""
    return url if url.startswith("https://") else ""


class SiteData:
    def __init__(self, catalog: Catalog, graph: Graph | None = None, history: History | None = None):
        self.catalog = catalog
        self.graph = graph
        self.history = history
        self.repo_url = _config_url(catalog.root, "repo_url")
        self.site_url = _config_url(catalog.root, "site_url") + "/"
        self.taxonomy = catalog.taxonomy
        self.entries = sorted(catalog.entries, key=lambda entry: (-entry.data["year"], entry.data["title"].lower()))

    @cached_property
    def _direct(self) -> dict[str, list[Entry]]:
        placed: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.entries:
            for node_id in entry.data["placement"]:
                placed[node_id].append(entry)
        return placed

    def papers_at(self, node: Node) -> list[Entry]:
        """Entries placed exactly on ``node``."""
        return self._direct.get(node.id, [])

    def papers_under(self, node: Node) -> list[Entry]:
        """Entries placed on ``node`` or anywhere below it, each once, newest first."""
        seen: dict[str, Entry] = {}
        for descendant in node.descendants():
            for entry in self.papers_at(descendant):
                seen.setdefault(entry.key, entry)
        return sorted(seen.values(), key=lambda entry: (-entry.data["year"], entry.data["title"].lower()))

    def edit_url(self, source: str) -> str:
        """The repository's edit page of ``source`` (a repository path), or "" without a repo_url."""
        return f"{self.repo_url}/edit/main/{source}" if self.repo_url else ""

    def source(self, path: Path | None) -> str:
        """``path`` relative to the repository root (POSIX), or "" when it is outside or unknown."""
        try:
            return Path(path).resolve().relative_to(self.catalog.root.resolve()).as_posix() if path else ""
        except ValueError:
            return ""

    def updated(self, *sources: str) -> str:
        """When the newest of ``sources`` (repository paths) was last committed, or why that is
        unknown; Markdown-safe."""
        from .history import NO_GIT

        return md.text(self.history.describe(*sources) if self.history is not None else NO_GIT)

    @cached_property
    def related(self) -> RelatedIndex:
        from .related import RelatedIndex

        return RelatedIndex(self.entries)

    def stage_of(self, entry: Entry) -> str:
        """Stage (or topic, for topics without stages) name of an entry's first placement."""
        node = self.taxonomy.by_id[entry.data["placement"][0]]
        stage = node.stage
        if stage is not None and node.topic.id == "efficiency" and stage.id != "efficiency-resources":
            return stage.name
        return node.topic.name if node.topic.id != "efficiency" else "Resources"
