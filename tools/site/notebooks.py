"""Notebooks (jupytext percent-format ``.py``) executed and rendered to Markdown, cached by hash.

The rendered Markdown and its images live in ``notebooks/_rendered/`` and are committed, so a
fresh clone builds the site without executing anything. A notebook is executed again only when
the hash of its source plus the ``reference_impls`` modules it imports has changed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..interrupts import deferred_interrupt, interrupt_flag
from . import markdown as md

__all__ = ["NotebookError", "discover_notebooks", "notebook_hash", "rendered_dir", "render_notebook", "notebook_md",
           "notebooks_index_md"]

_HASH_PREFIX = "<!-- atlas-notebook-hash: "
_RENDER_VERSION = "2"


class NotebookError(ValueError):
    """A notebook that could not be executed; the message names it and the reason (no traceback)."""


def discover_notebooks(root: Path) -> list[str]:
    """Repository-relative paths of every notebook (files starting with ``_`` are helpers)."""
    base = root / "notebooks"
    return sorted(str(path.relative_to(root)) for path in base.rglob("*.py")
                  if not any(part.startswith("_") for part in path.relative_to(base).parts))


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
_QUIET_KERNEL = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore:IProgress not found"}


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
        client = NotebookClient(notebook_node, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(root)}})
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
    body, outputs = _execute(root, notebook, timeout)
    target = rendered_dir(root, notebook)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in outputs.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(content)
    (staging / "index.md").write_text(f"{_HASH_PREFIX}{expected} -->\n{body}", encoding="utf-8")
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    with deferred_interrupt():  # two renames: the render is the old one or the new one, never half of each
        if target.exists():
            target.rename(previous)
        staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    return body, True


def notebook_md(notebook: str, body: str, current: bool, families: list[str]) -> str:
    lines = [md.front_matter(title=f"Notebook: {Path(notebook).stem}")]
    if not body.lstrip().startswith("# "):
        lines += [f"# Notebook `{notebook}`", ""]
    run_hint = f"*Run it yourself:* `python {notebook}` (add `ATLAS_QUICK=1` for the quick setting), or open it in Jupyter with jupytext."
    if not body:
        lines += ["!!! warning \"Not executed yet\"", "    This notebook has no rendered output yet. Run `python -m tools build` to execute and render it.", ""]
    else:
        if not current:
            lines += ["!!! warning \"Output may be stale\"", "    The notebook or the code it imports changed since this output was rendered; `python -m tools build` re-executes it.", ""]
        lines.append(body)
    lines += ["", "---", "", run_hint, ""]
    if families:
        lines += ["Family: " + ", ".join(families), ""]
    return "\n".join(lines)


def notebooks_index_md(notebooks: list[str], families_of: dict[str, list[str]]) -> str:
    lines = [md.front_matter(title="Notebooks"), "# Notebooks", "",
             "Each notebook runs on CPU in about a minute (set `ATLAS_QUICK=1` for a few seconds) and is rendered here with its outputs.", ""]
    rows = []
    for notebook in notebooks:
        page = str(Path(notebook).relative_to("notebooks").with_suffix(".md"))
        rows.append([md.link(f"`{notebook}`", page), ", ".join(families_of.get(notebook, []))])
    lines.append(md.table(["Notebook", "Family"], rows) if rows else "*No notebooks yet.*")
    return "\n".join(lines) + "\n"
