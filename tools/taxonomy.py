"""The taxonomy: topic trees (topic > stage > family > sub-family) loaded from ``taxonomy/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .yamlio import LoadedYaml, load_yaml

__all__ = ["Node", "Taxonomy", "load_taxonomy", "PLANNED"]

PLANNED = "planned"


@dataclass
class Node:
    """One taxonomy node. ``level`` is ``topic``, ``stage`` or ``family``."""

    id: str
    name: str
    level: str
    summary: str = ""
    aliases: list[str] = field(default_factory=list)
    kind: str = "method"
    axis: str = ""
    implementation: list[str] | str | None = None
    """Module path(s), ``PLANNED``, or None when the field is absent (the schema reports that)."""
    notebook: list[str] | str | None = None
    exempt_reason: str = ""
    findings: str = ""
    source: str = ""
    order: int = 0
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list, repr=False)
    file: Path | None = None
    line: int = 1

    @property
    def topic(self) -> Node:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    @property
    def stage(self) -> Node | None:
        node: Node | None = self
        while node is not None and node.level != "stage":
            node = node.parent
        return node

    @property
    def ancestors(self) -> list[Node]:
        """From the topic down to (excluding) this node."""
        chain, node = [], self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]

    @property
    def is_leaf_method(self) -> bool:
        return self.level == "family" and self.kind == "method" and not self.children

    def descendants(self) -> list[Node]:
        """This node and everything below it, depth first in file order."""
        found = [self]
        for child in self.children:
            found += child.descendants()
        return found

    @property
    def implementations(self) -> list[str]:
        return [] if self.implementation in (PLANNED, None) else _as_list(self.implementation)

    @property
    def notebooks(self) -> list[str]:
        return [] if self.notebook in (PLANNED, None) else _as_list(self.notebook)


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class Taxonomy:
    topics: list[Node]
    files: list[LoadedYaml]
    by_id: dict[str, Node]

    def nodes(self) -> list[Node]:
        return [node for topic in self.topics for node in topic.descendants()]

    def families(self) -> list[Node]:
        return [node for node in self.nodes() if node.level == "family"]


def _build(raw: dict, level: str, loaded: LoadedYaml, location: tuple, parent: Node | None) -> Node:
    node = Node(
        id=raw.get("id", ""),
        name=raw.get("name", ""),
        level=level,
        summary=raw.get("summary", ""),
        aliases=[str(alias) for alias in raw.get("aliases") or [] if isinstance(alias, str)],
        kind=raw.get("kind", "method"),
        axis=raw.get("axis", ""),
        implementation=raw.get("implementation"),
        notebook=raw.get("notebook"),
        exempt_reason=raw.get("exempt_reason", ""),
        findings=raw.get("findings", ""),
        source=raw.get("source", ""),
        order=raw.get("order", 0),
        parent=parent,
        file=loaded.path,
        line=loaded.line_of(location),
    )
    child_key, child_level = {
        "topic": ("stages", "stage"),
        "stage": ("families", "family"),
        "family": ("children", "family"),
    }[level]
    if level == "topic" and "families" in raw:
        child_key, child_level = "families", "family"
    for index, child in enumerate(raw.get(child_key) or []):
        if isinstance(child, dict):
            node.children.append(_build(child, child_level, loaded, location + (child_key, index), node))
    return node


def load_taxonomy(directory: Path, loaded_files: list[LoadedYaml] | None = None) -> Taxonomy:
    """Build the taxonomy from already loaded (and schema-valid) files, or load them from ``directory``."""
    if loaded_files is None:
        loaded_files = [load_yaml(path) for path in sorted(Path(directory).glob("*.yaml"))]
    topics = [
        _build(loaded.data, "topic", loaded, (), None) for loaded in loaded_files if isinstance(loaded.data, dict)
    ]
    topics.sort(key=lambda topic: (topic.order, topic.id))
    by_id: dict[str, Node] = {}
    for topic in topics:
        for node in topic.descendants():
            by_id.setdefault(node.id, node)
    return Taxonomy(topics=topics, files=loaded_files, by_id=by_id)
