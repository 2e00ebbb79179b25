"""Notebooks (jupytext percent-format ``.py``) executed and rendered to Markdown, cached by hash.

The rendered Markdown and its images live in ``notebooks/_rendered/`` and are committed, so a
fresh clone builds the site without executing anything. A notebook is executed again only when
the hash of its source plus the ``reference_impls`` modules it imports has changed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..interrupts import deferred_interrupt, interrupt_flag
from . import markdown as md
from .data import module_page, notebook_page, paper_page, relative

__all__ = [
    "NotebookError",
    "discover_notebooks",
    "notebook_hash",
    "rendered_dir",
    "render_notebook",
    "notebook_md",
    "notebooks_index_md",
]

_HASH_PREFIX = "<!-- atlas-notebook-hash: "
_RENDER_VERSION = "2"
# Wall seconds the last render's execution took (full setting, on the machine that rendered it).
_RUN_PREFIX = "<!-- atlas-notebook-seconds: "


class NotebookError(ValueError):
    """A notebook that could not be executed; the message names it and the reason (no traceback)."""


def discover_notebooks(root: Path) -> list[str]:
    """Repository-relative paths of every notebook (files starting with ``_`` are helpers)."""
    base = root / "notebooks"
    return sorted(
        str(path.relative_to(root))
        for path in base.rglob("*.py")
        if not any(part.startswith("_") for part in path.relative_to(base).parts)
    )


def _imported_sources(root: Path, source: str) -> list[Path]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reference_impls"):
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names if alias.name.startswith("reference_impls"))
    files = []
    for module in sorted(modules):
        base = root.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                files.append(candidate)
    return files


def notebook_hash(root: Path, notebook: str) -> str:
    path = root / notebook
    source = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(_RENDER_VERSION.encode())
    digest.update(source.encode())
    for dependency in _imported_sources(root, source):
        digest.update(str(dependency.relative_to(root)).encode())
        digest.update(dependency.read_bytes())
    return digest.hexdigest()[:16]


def render_seconds(root: Path, notebook: str) -> int | None:
    """Wall seconds the committed render took to execute, when it recorded them (renders made
    before this was recorded have no figure: None, nothing is guessed)."""
    path = rendered_dir(root, notebook) / "index.md"
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
    except OSError:
        return None
    match = re.search(re.escape(_RUN_PREFIX) + r"(\d+) -->", first)
    return int(match.group(1)) if match else None


def rendered_dir(root: Path, notebook: str) -> Path:
    relative = Path(notebook).relative_to("notebooks").with_suffix("")
    return root / "notebooks" / "_rendered" / relative


def _cached(root: Path, notebook: str, expected: str) -> str | None:
    path = rendered_dir(root, notebook) / "index.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return text if text.startswith(f"{_HASH_PREFIX}{expected} -->") else None


# Progress bars and the kernel's missing-widgets warning are noise on a docs page.
_QUIET_KERNEL = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    backup = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in backup.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _execute(root: Path, notebook: str, timeout: int) -> tuple[str, dict[str, bytes]]:
    import jupytext
    from nbclient import NotebookClient
    from nbconvert import MarkdownExporter

    notebook_node = jupytext.read(root / notebook)
    python_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with _environment({"PYTHONPATH": python_path, **_QUIET_KERNEL}), interrupt_flag() as interrupted:
        client = NotebookClient(
            notebook_node, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(root)}}
        )
        try:
            client.execute()
        except KeyboardInterrupt:
            raise
        except Exception as error:  # nbclient's own errors carry the cell's traceback as text
            if interrupted:
                raise KeyboardInterrupt from None
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise NotebookError(f"{notebook}: execution failed: {reason}") from None
    files_dir = f"{Path(notebook).stem}_files"
    body, resources = MarkdownExporter().from_notebook_node(notebook_node, resources={"output_files_dir": files_dir})
    # warnings print absolute paths of this checkout; the page shows them relative to the repository
    return body.replace(str(root) + os.sep, ""), dict(resources.get("outputs", {}))


def render_notebook(root: Path, notebook: str, *, execute: bool = True, timeout: int = 600) -> tuple[str, bool]:
    """The rendered Markdown of a notebook (executing it when stale and ``execute``); (text, is_current)."""
    expected = notebook_hash(root, notebook)
    cached = _cached(root, notebook, expected)
    if cached is not None:
        return cached.split("\n", 1)[1], True
    if not execute:
        existing = rendered_dir(root, notebook) / "index.md"
        if existing.is_file():
            return existing.read_text(encoding="utf-8").split("\n", 1)[1], False
        return "", False
    print(f"executing {notebook} ...", flush=True)
    started = time.perf_counter()
    body, outputs = _execute(root, notebook, timeout)
    seconds = time.perf_counter() - started
    target = rendered_dir(root, notebook)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in outputs.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(content)
    # The run time rides on the hash line (the first line is never part of the page body).
    header = f"{_HASH_PREFIX}{expected} --> {_RUN_PREFIX}{seconds:.0f} -->"
    (staging / "index.md").write_text(f"{header}\n{body}", encoding="utf-8")
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    with deferred_interrupt():  # two renames: the render is the old one or the new one, never half of each
        if target.exists():
            target.rename(previous)
        staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    return body, True


_OUTPUT_LINE = re.compile(r"^    (\S.{39,})$")


def collapse_repeated_output(body: str) -> str:
    """Print each long output line (a warning printed in a loop) once, saying how often it came.

    Only indented output lines of 40 characters or more outside code fences count; code is untouched.
    """
    lines = body.split("\n")
    fence, counts, kinds = None, Counter(), []
    for line in lines:
        opening = re.match(r"^(```|~~~)", line)
        if fence is not None:
            kinds.append(None)
            fence = None if opening and opening.group(1) == fence else fence
            continue
        if opening:
            fence = opening.group(1)
            kinds.append(None)
            continue
        match = _OUTPUT_LINE.match(line)
        kinds.append(match.group(1) if match else None)
        if match:
            counts[match.group(1)] += 1
    seen: set[str] = set()
    out = []
    for line, kind in zip(lines, kinds):
        if kind is not None and counts[kind] > 1:
            if kind in seen:
                continue
            seen.add(kind)
            line = f"{line}   [printed {counts[kind]} times on this page; shown once]"
        out.append(line)
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(out))


def notebook_title(notebook: str, body: str) -> str:
    """The notebook's first ``# `` heading, else its file name."""
    for line in body.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return f"Notebook: {Path(notebook).stem}"


# The .ipynb made from each notebook source, by source text (``serve`` regenerates on every change).
_IPYNB: dict[str, str] = {}


def notebook_source_files(root: Path, notebook: str) -> dict[str, bytes]:
    """The notebook's ``.py`` and a generated ``.ipynb`` (no outputs), next to its page, for download."""
    import jupytext

    page_dir = Path(notebook).parent
    source = (root / notebook).read_text(encoding="utf-8")
    if source not in _IPYNB:
        notebook_data = jupytext.reads(source, fmt="py:percent")
        for index, cell in enumerate(notebook_data.cells):
            cell.id = f"cell-{index}"  # jupytext draws random ids: the same source gave a new file each build
        _IPYNB[source] = jupytext.writes(notebook_data, fmt="ipynb")
    ipynb = _IPYNB[source]
    return {
        str(page_dir / Path(notebook).name): source.encode("utf-8"),
        str(page_dir / Path(notebook).with_suffix(".ipynb").name): ipynb.encode("utf-8"),
    }


def notebook_md(notebook: str, body: str, current: bool, families: list[str], site: Any = None) -> str:
    title = notebook_title(notebook, body)
    edit_url = site.edit_url(notebook) if site is not None else ""
    lines = [md.front_matter(title=title, edit_url=edit_url)]
    if not body.lstrip().startswith("# "):
        lines += [f"# Notebook `{notebook}`", ""]
    name = Path(notebook).name
    ipynb = Path(name).with_suffix(".ipynb").name
    quick = md.code("ATLAS_QUICK=1 python " + notebook)
    seconds = render_seconds(site.catalog.root, notebook) if site is not None else None
    run = [
        '!!! tip "Run it yourself"',
        "",
        f"    Download {md.link(md.code(name), name)} or {md.link(md.code(ipynb), ipynb)}"
        f" (no outputs), or from a clone of the repository:",
        "",
        f"    - as a script: {md.code('python ' + notebook)} (quick setting: {quick})",
        f"    - in JupyterLab: {md.code('make lab')}, then open {md.code(notebook)} (jupytext opens it as a notebook)",
        "",
    ]
    if seconds is not None:
        run += [f"    The run rendered below took {seconds} s of wall time on a CPU (full setting).", ""]
    graph = getattr(site, "graph", None)
    related = []
    if graph is not None:
        page = notebook_page(notebook)
        modules = sorted(module for module in graph.families_of_module if notebook in graph.notebooks_of_module(module))
        for module in modules:
            entry = graph.entry_of_module(module)
            item = md.link(md.code(module), relative(page, module_page(module)))
            if entry is not None:
                item += " · paper: " + md.link(md.text(entry.data["title"]), relative(page, paper_page(entry.key)))
            related.append(f"- {item}")
    header = []
    if families:
        header += ["Family: " + ", ".join(families), ""]
    if related:
        header += ["Implementations shown here:", "", *related, ""]
    if not body:
        lines += (
            header
            + run
            + [
                '!!! warning "Not executed yet"',
                "    This notebook has no rendered output yet. Run `python -m tools build` to execute and render it.",
                "",
            ]
        )
    else:
        body = collapse_repeated_output(body)
        first, _, rest = body.lstrip().partition("\n") if body.lstrip().startswith("# ") else ("", "", body)
        if first:
            lines += [first, ""]
        lines += header + run
        if not current:
            lines += [
                '!!! warning "Output may be stale"',
                "    The notebook or the code it imports changed since this output was rendered; `python -m tools build` re-executes it.",
                "",
            ]
        lines.append(rest)
    if site is not None:
        lines += ["", f"<small>Notebook source last updated {site.updated(notebook)}</small>"]
    return "\n".join(lines) + "\n"


def notebooks_index_md(
    notebooks: list[str], families_of: dict[str, list[str]], titles: dict[str, str] | None = None
) -> str:
    lines = [
        md.front_matter(title="Notebooks"),
        "# Notebooks",
        "",
        "Each notebook runs on CPU in about a minute (set `ATLAS_QUICK=1` for a few seconds) and is rendered here with its outputs.",
        "",
    ]
    rows = []
    for notebook in notebooks:
        page = str(Path(notebook).relative_to("notebooks").with_suffix(".md"))
        label = md.text(titles.get(notebook, Path(notebook).stem)) if titles else md.code(notebook)
        rows.append(
            [
                md.link(label, page),
                md.code(Path(notebook).relative_to("notebooks")),
                ", ".join(families_of.get(notebook, [])),
            ]
        )
    lines.append(md.table(["Notebook", "File", "Family"], rows) if rows else "*No notebooks yet.*")
    return "\n".join(lines) + "\n"
