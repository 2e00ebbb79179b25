"""API pages for the modules of ``reference_impls`` (mkdocstrings stubs), their index, and the
design README of method packages.

A method may be a package (``reference_impls/<stage>/<name>/__init__.py``) with a ``README.md``
beside its ``__init__.py``: the README holds its full design. The family page that lists the
package shows that README (:func:`package_design_md`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..taxonomy import Taxonomy
from . import markdown as md
from .data import SiteData, module_page, node_page, notebook_page, paper_page, relative

__all__ = ["discover_modules", "module_md", "implementations_index_md", "package_readme", "package_design_md"]


def discover_modules(root: Path) -> dict[str, str]:
    """Public modules under ``reference_impls`` -> first line of their docstring.

    A package's ``__init__.py`` stands for the package (``pkg/__init__.py`` -> ``pkg``, the
    mapping of mkdocstrings' ``gen_ref_nav`` recipe); other names starting with ``_`` are private.
    """
    modules = {}
    package_root = root / "reference_impls"
    for path in sorted(package_root.rglob("*.py")):
        relative_parts = path.relative_to(root).with_suffix("").parts
        if relative_parts[-1] == "__init__":
            relative_parts = relative_parts[:-1]
        if (
            any(part.startswith("_") for part in relative_parts)
            or "results" in relative_parts
            or "checkpoints" in relative_parts
        ):
            continue
        modules[".".join(relative_parts)] = _summary(path, root)
    return modules


# First docstring line per module file and version (``serve`` asks again on every change).
_SUMMARIES: dict[tuple[str, int, int], str] = {}


def _summary(path: Path, root: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SUMMARIES:
        try:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError as error:
            raise ValueError(f"{path.relative_to(root)}:{error.lineno}: cannot parse module: {error.msg}") from None
        _SUMMARIES[key] = docstring.strip().split("\n", 1)[0]
    return _SUMMARIES[key]


def module_source(root: Path, module: str) -> str:
    """The file a module's API page documents: ``pkg/mod.py`` or ``pkg/__init__.py``."""
    base = Path(*module.split("."))
    return (base.with_suffix(".py") if (root / base.with_suffix(".py")).is_file() else base / "__init__.py").as_posix()


def module_md(module: str, summary: str, families: list, site: SiteData | None = None) -> str:
    """A module's API page. It is kept out of the search index (its source and signatures would
    outrank the paper and family pages); the family, paper and notebook pages link here."""
    page = module_page(module)
    edit_url = site.edit_url(module_source(site.catalog.root, module)) if site is not None else ""
    lines = [md.front_matter(title=module, search={"exclude": True}, edit_url=edit_url), f"# `{module}`", ""]
    if families:
        lines += [
            "Family: " + ", ".join(md.link(md.text(node.name), relative(page, node_page(node))) for node in families),
            "",
        ]
    graph = site.graph if site is not None else None
    if graph is not None:
        entry = graph.entry_of_module(module)
        if entry is not None:
            label = md.text(graph.paper_label(module))
            lines += ["Paper: " + md.link(label, relative(page, paper_page(entry.key))), ""]
        notebooks = graph.notebooks_of_module(module) if module in graph.families_of_module else []
        if notebooks:
            lines += [
                "Notebook: "
                + ", ".join(
                    md.link(md.code(notebook), relative(page, notebook_page(notebook))) for notebook in notebooks
                ),
                "",
            ]
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
    lines = [
        md.front_matter(title="Reference implementations"),
        "# Reference implementations",
        "",
        "One module per method, grouped by stage or topic. Each opens with a paper card: the idea, "
        "the paper, a runnable example and where we deviate from it.",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for module in modules:
        groups.setdefault(".".join(module.split(".")[:2]), []).append(module)
    for group, members in groups.items():
        lines += [f"## `{group}`", ""]
        rows = []
        for module in members:
            families = ", ".join(
                md.link(md.text(node.name), relative(page, node_page(node))) for node in by_module.get(module, [])
            )
            rows.append(
                [
                    md.link(f"`{module.split('.')[-1]}`", relative(page, module_page(module))),
                    md.text(modules[module]),
                    families,
                ]
            )
        lines += [md.table(["Module", "Summary", "Family"], rows), ""]
    if not modules:
        lines.append("*No modules yet.*")
    return "\n".join(lines)


def package_readme(root: Path, module: str) -> Path | None:
    """The ``README.md`` of ``module`` when it is a package that has one, else ``None``."""
    folder = root.joinpath(*module.split("."))
    readme = folder / "README.md"
    return readme if (folder / "__init__.py").is_file() and readme.is_file() else None


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})(\s+.*)$")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")


def design_anchor(module: str) -> str:
    """Id of the design section of ``module`` on its family page."""
    return "design-" + module.replace(".", "-").replace("_", "-")


def _link_target(target: str, readme: Path, root: Path, page: str) -> str | None:
    """Where a README link points from the family page; ``None`` when it has no page there."""
    if target.startswith("#") or re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return target  # an anchor of the README (same ids on the family page) or an absolute URL
    path, _, anchor = target.partition("#")
    resolved = (readme.parent / path).resolve()
    if resolved == readme.resolve():
        return "#" + anchor if anchor else None
    try:
        parts = resolved.relative_to((root / "reference_impls").resolve().parent).with_suffix("").parts
    except ValueError:
        return None
    if resolved.suffix == ".py" or (resolved / "__init__.py").is_file():
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        return relative(page, module_page(".".join(parts)))
    return None


def package_design_md(root: Path, module: str, page: str) -> list[str]:
    """The package README of ``module`` as a section of the page ``page`` (no lines when it has none).

    The README is trusted, hand-written repository text, so it is rendered as ordinary Markdown,
    not escaped like entry data. Its title (``#``) is replaced by a "Design" heading and its other
    headings move one level down, so that they nest under it; the heading texts are unchanged, so
    the README's own ``#anchor`` links work on the page as on GitHub. A relative link to a module of
    ``reference_impls`` points at that module's API page; any other relative link (a file with no
    page on the site) keeps only its text.
    """
    readme = package_readme(root, module)
    if readme is None:
        return []
    source = readme.relative_to(root).as_posix()
    lines = [
        f'## Design of `{module}` {{#{design_anchor(module)} data-search-exclude=""}}',
        "",
        f"*The design notes of the package, from `{source}`.*",
        "",
    ]
    fence, after_title = None, False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if after_title and not line.strip():
            continue
        after_title = False
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1) == fence:
                fence = None
            lines.append(line)
            continue
        if opening:
            fence = opening.group(1)
            lines.append(line)
            continue
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) == 1:
            after_title = True
            continue  # the README's title: the section heading above replaces it
        if heading:
            line = "#" * min(len(heading.group(1)) + 1, 6) + heading.group(2)

        def rewrite(match: re.Match) -> str:
            bang, label, target, title = match.groups()
            new_target = _link_target(target, readme, root, page)
            return label if new_target is None else f"{bang}[{label}]({new_target}{title})"

        lines.append(_LINK.sub(rewrite, line))
    return lines + [""]
