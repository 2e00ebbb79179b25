"""The reused Markdown converter (tools/site/converter.py) renders every page as a new one does:
state of one page (footnotes, heading ids, tab ids, snippets, the table of contents, links, raw
HTML anchors) never reaches the next, and API pages keep links relative to themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import markdown
import pytest

from tools.site.converter import one_converter

from .conftest import make_repo

# Two pages with the same headings, footnotes, tabs and snippet, in different folders; the second
# has no footnote of its own label, so a leaked footnote would show on it.
PAGES = {
    "first.md": (
        "# Same title\n\n## Intro\n\nText with a note[^a] and *stars* \\*escaped\\* &lt;b&gt; `<code>`.[^b]\n\n"
        "[^a]: First page's note.\n[^b]: Second note.\n\n"
        '=== "One"\n\n    one\n\n=== "Two"\n\n    two\n\n'
        "## Intro\n\nSee [the other page](deeper/second.md#intro) and [here](#intro_1).\n\n"
        '<span id="raw-anchor">raw</span>\n\n<div class="box" markdown>\n**in html**\n</div>\n\n'
        "## With id { #custom-id }\n\n```python\nx = 1  # highlighted\n```\n\n"
        '--8<-- "CONTRIBUTING.md"\n'
    ),
    "deeper/second.md": (
        "# Same title\n\n## Intro\n\nIts own note[^b].\n\n[^b]: Only this page's note.\n\n"
        '=== "Alone"\n\n    alone\n\n??? note "Details"\n    folded\n\n'
        "[back](../first.md#custom-id) and [raw](../first.md#raw-anchor)\n\n"
        '--8<-- "CONTRIBUTING.md"\n'
    ),
    "empty.md": "---\ntitle: Nothing here\n---\n",
    "api/one.md": "# API one\n\n::: sample_module\n",
    "api/deep/two.md": "# API two\n\n::: sample_module\n",
}
ORDER = ["first.md", "deeper/second.md", "empty.md", "api/one.md", "first.md", "api/deep/two.md", "deeper/second.md"]
SAMPLE_MODULE = '''"""A module whose docstring links to a page: the link is relative to the API page showing it."""


def sample() -> int:
    """See [the first page](../first.md).

    Returns:
        One.
    """
    return 1
'''


def _toc(items: Any) -> list:
    return [(item.title, item.id, item.level, _toc(item.children)) for item in items]


def _render(repo: Path, names: list[str]) -> list[tuple]:
    from mkdocs.config import load_config
    from mkdocs.structure.files import get_files
    from mkdocs.structure.pages import Page

    config = load_config(config_file=str(repo / "mkdocs.yml"), strict=False)
    config.plugins.on_startup(command="build", dirty=False)
    config = config.plugins.on_config(config)
    files = get_files(config)
    config.plugins.on_files(files, config=config)
    shown = []
    for name in names:
        page = Page(None, files.get_file_from_path(name), config)
        page.read_source(config)
        page.markdown = config.plugins.on_page_markdown(page.markdown, page=page, config=config, files=files)
        page.render(config, files)
        links = {file.src_uri: anchors for file, anchors in (page.links_to_anchors or {}).items()}
        shown.append((name, page.content, _toc(page.toc), page.title, sorted(page.present_anchor_ids or ()), links))
    return shown


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the site's configuration (extensions, plugins) with the pages above."""
    repo = make_repo(tmp_path / "repo", ())
    (repo / "CONTRIBUTING.md").write_text("Snippet text from the guide.\n")
    (repo / "sample_module.py").write_text(SAMPLE_MODULE)
    for name, text in PAGES.items():
        (repo / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "docs" / name).write_text(text)
    monkeypatch.chdir(repo)
    return repo


def test_reused_converter_renders_like_new_ones(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    init = markdown.Markdown.__init__

    def counted(self: markdown.Markdown, **kwargs: Any) -> None:
        made.append(self)
        init(self, **kwargs)

    monkeypatch.setattr(markdown.Markdown, "__init__", counted)
    fresh = _render(project, ORDER)
    made_fresh = len(made)
    made.clear()
    with one_converter():
        reused = _render(project, ORDER)
    assert len(made) < made_fresh  # the converter was reused ...
    for expected, got in zip(fresh, reused, strict=True):
        assert got == expected, expected[0]  # ... and every page came out the same
    # The cases this guards are there: footnotes and ids of each page are its own.
    first, second = fresh[0][1], fresh[1][1]
    assert "First page&#x27;s note" in first or "First page's note" in first
    assert "First page" not in second and "Only this page" in second
    assert 'id="intro"' in second and "intro_1" not in second and 'id="__tabbed_1_1"' in second
    api_one, api_two = fresh[3][1], fresh[5][1]
    # The docstring's link is resolved from each API page: found from api/, not from api/deep/.
    assert 'href="../../first/"' in api_one and 'href="../first.md"' in api_two


def test_renders_are_restored_after(project: Path) -> None:
    from mkdocs.structure import pages

    render, module = pages.Page.render, pages.markdown
    with pytest.raises(RuntimeError), one_converter():
        raise RuntimeError("stop")
    assert pages.Page.render is render and pages.markdown is module


def test_command_line_keeps_mkdocs_exit_status(project: Path) -> None:
    """``python -m tools.site.converter build`` is mkdocs' command: the copied configuration's
    navigation names generated pages this project lacks: warnings that fail a strict build only
    (``mkdocs.yml`` asks for strict; ``--no-strict`` overrides it)."""
    command = [sys.executable, "-m", "tools.site.converter", "build", "-f", str(project / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    run = {"cwd": project, "env": env, "capture_output": True, "text": True}
    strict = subprocess.run([*command, "--strict", "-d", str(project / "strict")], **run)
    assert strict.returncode == 1 and "Aborted with" in strict.stderr + strict.stdout
    lenient = subprocess.run([*command, "--no-strict", "-d", str(project / "lenient")], **run)
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    assert "Only this page" in (project / "lenient" / "deeper" / "second" / "index.html").read_text()
