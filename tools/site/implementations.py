"""API pages for the modules of ``reference_impls`` (mkdocstrings stubs) and their index."""

from __future__ import annotations

import ast
from pathlib import Path

from ..taxonomy import Taxonomy
from . import markdown as md
from .data import module_page, node_page, relative

__all__ = ["discover_modules", "module_md", "implementations_index_md"]


def discover_modules(root: Path) -> dict[str, str]:
    """Public modules under ``reference_impls`` -> first line of their docstring."""
    modules = {}
    package_root = root / "reference_impls"
    for path in sorted(package_root.rglob("*.py")):
        relative_parts = path.relative_to(root).with_suffix("").parts
        if any(part.startswith("_") for part in relative_parts) or "results" in relative_parts or "checkpoints" in relative_parts:
            continue
        try:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError as error:
            raise ValueError(f"{path.relative_to(root)}:{error.lineno}: cannot parse module: {error.msg}") from None
        modules[".".join(relative_parts)] = docstring.strip().split("\n", 1)[0]
    return modules


def module_md(module: str, summary: str, families: list) -> str:
    page = module_page(module)
    lines = [md.front_matter(title=module), f"# `{module}`", ""]
    if families:
        lines += ["Family: " + ", ".join(md.link(md.text(node.name), relative(page, node_page(node))) for node in families), ""]
    lines += [f"::: {module}", ""]
    return "\n".join(lines)


def families_by_module(taxonomy: Taxonomy) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in taxonomy.nodes():
        for module in node.implementations:
            found.setdefault(module, []).append(node)
    return found


def implementations_index_md(modules: dict[str, str], taxonomy: Taxonomy) -> str:
    page = "implementations/index.md"
    by_module = families_by_module(taxonomy)
    lines = [md.front_matter(title="Reference implementations"), "# Reference implementations", "",
             "One module per method, grouped by stage or topic. Each opens with a paper card: the idea, "
             "the paper, a runnable example and where we deviate from it.", ""]
    groups: dict[str, list[str]] = {}
    for module in modules:
        groups.setdefault(".".join(module.split(".")[:2]), []).append(module)
    for group, members in groups.items():
        lines += [f"## `{group}`", ""]
        rows = []
        for module in members:
            families = ", ".join(md.link(md.text(node.name), relative(page, node_page(node))) for node in by_module.get(module, []))
            rows.append([md.link(f"`{module.split('.')[-1]}`", relative(page, module_page(module))), md.text(modules[module]), families])
        lines += [md.table(["Module", "Summary", "Family"], rows), ""]
    if not modules:
        lines.append("*No modules yet.*")
    return "\n".join(lines)
