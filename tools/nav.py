"""Where taxonomy pages live, and the check that ``mkdocs.yml`` lists every one of them.

``mkdocs.yml`` keeps an explicit ``nav:`` (Zensical reads it as it is); validate reports any
taxonomy page missing there, with the exact entry to add. This module is tools-level (no site
code, no matplotlib) because ``validate`` uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .taxonomy import Node, Taxonomy

__all__ = ["node_page", "taxonomy_nav", "nav_pages", "check_nav"]


def node_page(node: Node) -> str:
    """Docs-relative path of a taxonomy node's page."""
    parts = [ancestor.id for ancestor in node.ancestors] + [node.id]
    if node.level in ("topic", "stage") or node.children:
        return "taxonomy/" + "/".join(parts) + "/index.md"
    return "taxonomy/" + "/".join(parts) + ".md"


def _nav_item(node: Node) -> Any:
    if node.level in ("topic", "stage") or node.children:
        return {node.name: [node_page(node)] + [_nav_item(child) for child in node.children]}
    return node_page(node)


def taxonomy_nav(taxonomy: Taxonomy) -> list[Any]:
    """The ``Taxonomy`` section of the nav, as mkdocs.yml writes it."""
    return ["taxonomy/index.md"] + [_nav_item(topic) for topic in taxonomy.topics]


def nav_pages(nav: Any) -> list[str]:
    """Every page path in a nav structure, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def check_nav(root: Path, taxonomy: Taxonomy) -> list[str]:
    """Messages for taxonomy pages missing from (or stale in) the mkdocs.yml nav."""
    try:
        config = yaml.safe_load((root / "mkdocs.yml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return [f"cannot read mkdocs.yml: {error}"]
    listed = nav_pages(config.get("nav", []) if isinstance(config, dict) else [])
    expected = nav_pages(taxonomy_nav(taxonomy))
    parents = {node_page(node): node_page(node.parent) for node in taxonomy.nodes() if node.parent is not None}
    problems = []
    for page in expected:
        if page not in listed:
            where = f"in the section of '{parents[page]}'" if page in parents else "at the top of 'Taxonomy'"
            problems.append(f"nav lacks the taxonomy page '{page}'; add '- {page}' to mkdocs.yml {where}")
    for page in listed:
        if page.startswith("taxonomy/") and page not in expected:
            problems.append(f"nav lists '{page}', which no taxonomy node generates")
    return problems
