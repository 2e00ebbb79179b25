"""The links between papers, implementations, notebooks, reproduced results and families.

Everything is derived from data already in the repository, never typed twice:

- a module's paper card says ``Paper: arXiv <id>``: that id names the module's paper (an entry's own
  ``implementation`` field names one as well);
- the taxonomy names each family's modules and notebooks;
- a notebook imports the modules it shows (so a family with two modules and two notebooks pairs them);
- a results file names its families, and its rows name the method (``method``: a module's last name).

Method aliases (what people call a method: FastV, ToMe, H2O) come from an entry's optional
``aliases`` list and from the paper card's first line (``"FastV: prune visual tokens ..."``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..catalog import Catalog, Entry
from ..taxonomy import Node

__all__ = ["Graph", "MethodLinks", "card_paper", "card_alias", "card_upstream", "github_repo", "public_names"]

_CARD_PAPER = re.compile(r"^Paper:\s*arXiv\s+(\d{4}\.\d{4,5})", re.MULTILINE)
# "FastV: ...", "Ada-KV: ...", "LLaVA-PruMerge: ..." (one word before the colon)
_CARD_ALIAS = re.compile(r"^\**([A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*):\s")
# "Upstream: FFY0/AdaKV adaptive_snapkv/...": the first word, when it has the owner/repo shape
# ("Upstream: none public", "Upstream: GA and NPO follow ..." name no repository there).
_CARD_UPSTREAM = re.compile(r"^Upstream:\s*([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)", re.MULTILINE)
_GITHUB_REPO = re.compile(r"^https?://(?:www\.)?github\.com/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)")


_DOCSTRINGS: dict[tuple[str, int, int], str] = {}


def _docstring(path: Path) -> str:
    """A module's docstring, remembered per file version (``serve`` asks on every change)."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in _DOCSTRINGS:
            _DOCSTRINGS[key] = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        return _DOCSTRINGS[key]
    except (SyntaxError, OSError, UnicodeDecodeError):
        return ""


def card_paper(docstring: str) -> str | None:
    """The arXiv id a paper card names on its ``Paper:`` line (the first one), if any."""
    match = _CARD_PAPER.search(docstring)
    return match.group(1) if match else None


def card_upstream(docstring: str) -> str | None:
    """The GitHub ``owner/repo`` a paper card's ``Upstream:`` line starts with, if it names one."""
    match = _CARD_UPSTREAM.search(docstring)
    return match.group(1).rstrip(".") if match else None


def github_repo(url: str) -> str | None:
    """``owner/repo`` of a GitHub link (``https://github.com/FFY0/AdaKV`` -> ``FFY0/AdaKV``), else None."""
    match = _GITHUB_REPO.match(url.strip())
    return match.group(1).removesuffix(".git") if match else None


def card_alias(docstring: str) -> str | None:
    """The method's short name when the card's first line starts with it (``"FastV: ..."`` -> ``FastV``)."""
    match = _CARD_ALIAS.match(docstring.strip())
    return match.group(1) if match else None


def public_names(path: Path) -> list[str]:
    """The names a module exports in ``__all__`` (empty when it has none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, OSError, UnicodeDecodeError):
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            return [name for name in value if isinstance(name, str)]
    return []


def module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# Parsed imports per notebook file and version: the pages ask for them about 1,500 times a build.
_IMPORTS: dict[tuple[str, int, int], frozenset[str]] = {}


def notebook_imports(root: Path, notebook: str) -> set[str]:
    """Modules of ``reference_impls`` a notebook imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``)."""
    path = root / notebook
    try:
        stat = path.stat()
    except OSError:
        return set()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _IMPORTS:
        _IMPORTS[key] = frozenset(_parse_imports(path))
    return set(_IMPORTS[key])


def _parse_imports(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, OSError, UnicodeDecodeError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reference_impls"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("reference_impls"))
    return found


@dataclass
class MethodLinks:
    """Everything the site links to from one implemented paper (or one module)."""

    module: str
    families: list[Node] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    import_line: str = ""

    @property
    def method(self) -> str:
        """The name results rows use for this method: the module's last part (``block_sparse`` ->
        ``block-sparse``, as the registry spells it)."""
        return module_method(self.module)


def method_name(name: str) -> str:
    """A method's name as results rows and the registry spell it: hyphens, not underscores."""
    return name.replace("_", "-")


def module_method(module: str) -> str:
    """The method name of a module: its last part, spelt as results rows spell it."""
    return method_name(module.rsplit(".", 1)[-1])


class Graph:
    """Links derived from the catalog, the taxonomy, the modules' paper cards, notebooks and results."""

    def __init__(self, catalog: Catalog, modules: dict[str, str], notebooks: list[str], results: list[dict[str, Any]]):
        self.catalog = catalog
        self.root = catalog.root
        self.modules = modules
        self.notebooks = notebooks
        self.results = results

    @cached_property
    def _cards(self) -> dict[str, str]:
        """Module -> its paper card docstring (only modules that name a paper)."""
        cards = {}
        for module in self.modules:
            path = module_file(self.root, module)
            text = _docstring(path) if path else ""
            if card_paper(text):
                cards[module] = text
        return cards

    @cached_property
    def families_of_module(self) -> dict[str, list[Node]]:
        found: dict[str, list[Node]] = {}
        for node in self.catalog.taxonomy.nodes():
            for module in node.implementations:
                found.setdefault(module, []).append(node)
        return found

    @cached_property
    def modules_of_entry(self) -> dict[str, list[str]]:
        """Entry key -> the modules that implement it (paper card or the entry's ``implementation``).

        A card counts when the module's family is one the paper is placed in: a baseline that names
        the paper it is compared in (another family) does not implement it; an entry's own
        ``implementation`` replaces what the cards say. Several modules may name
        the same paper (a package and its parts): then only the package is kept.
        """
        by_arxiv = {entry.data["arxiv"]: entry for entry in self.catalog.entries if entry.data.get("arxiv")}
        found: dict[str, list[str]] = {}
        for module, card in self._cards.items():
            entry = by_arxiv.get(card_paper(card) or "")
            families = {node.id for node in self.families_of_module.get(module, [])}
            if entry is not None and families & set(entry.data["placement"]):
                found.setdefault(entry.key, []).append(module)
        for entry in self.catalog.entries:
            module = entry.data.get("implementation")
            if module:  # the entry's own word wins over cards (baselines cite it too)
                found[entry.key] = [module] if module in self.modules else []
        for key, modules in list(found.items()):
            if not modules:
                del found[key]
                continue
            found[key] = sorted(
                module for module in modules if not any(module.startswith(other + ".") for other in modules)
            )
        return found

    @cached_property
    def _entry_of_module(self) -> dict[str, Entry]:
        entries = self.catalog.by_key()
        found: dict[str, Entry] = {}
        for key, modules in self.modules_of_entry.items():
            for module in modules:
                if key in entries:
                    found.setdefault(module, entries[key])
        return found

    def entry_of_module(self, module: str) -> Entry | None:
        return self._entry_of_module.get(module)

    def paper_label(self, module: str) -> str:
        """How a module's API page names its paper, from the module's own paper card (method name and
        arXiv id), else the entry's key: never the entry's title, so editing an entry does not make
        the API pages (the slowest to build) stale."""
        card = self._cards.get(module, "")
        arxiv = card_paper(card)
        if arxiv:
            alias = card_alias(card)
            return f"{alias}, arXiv {arxiv}" if alias else f"arXiv {arxiv}"
        entry = self.entry_of_module(module)
        return entry.key if entry is not None else ""

    def aliases(self, entry: Entry) -> list[str]:
        """What people call the method of ``entry``: its ``aliases`` field, then its modules' card names."""
        names = [str(alias) for alias in entry.data.get("aliases") or []]
        for module in self.modules_of_entry.get(entry.key, []):
            alias = card_alias(self._cards.get(module, ""))
            if alias and alias not in names:
                names.append(alias)
        title = entry.data["title"].lower()
        return [name for name in names if not title.startswith(name.lower() + ":")]

    def notebooks_of_module(self, module: str) -> list[str]:
        """The family's notebooks that import ``module`` (all of the family's when none does)."""
        family_notebooks = [notebook for node in self.families_of_module.get(module, []) for notebook in node.notebooks]
        importing = [
            notebook
            for notebook in family_notebooks
            if any(name == module or name.startswith(module + ".") for name in notebook_imports(self.root, notebook))
        ]
        return list(dict.fromkeys(importing or family_notebooks))

    def results_of_module(self, module: str) -> list[dict[str, Any]]:
        """Results files with a row for this module's method."""
        method = module_method(module)
        families = {node.id for node in self.families_of_module.get(module, [])}
        return [
            data
            for data in self.results
            if families & set(data.get("families", []))
            and any(method_name(str(row.get("method", ""))) == method for row in data["rows"])
        ]

    def links(self, module: str) -> MethodLinks:
        path = module_file(self.root, module)
        names = public_names(path) if path else []
        import_line = f"from {module} import {', '.join(names[:3])}" if names else f"import {module}"
        return MethodLinks(
            module,
            self.families_of_module.get(module, []),
            self.notebooks_of_module(module),
            self.results_of_module(module),
            import_line,
        )

    def entry_links(self, entry: Entry) -> list[MethodLinks]:
        return [self.links(module) for module in self.modules_of_entry.get(entry.key, [])]

    def implemented(self, entry: Entry) -> bool:
        return bool(self.modules_of_entry.get(entry.key))
