"""``python -m tools compare-sites``: two builds of the same pages, told apart."""

from __future__ import annotations

from pathlib import Path

from tools.__main__ import main
from tools.site.compare import compare_sites, read_page

PAGE = """<html><head><title>{title}</title><script>var hidden = "not text";</script></head><body>
<nav><a href="{up}index.html">Home</a></nav>
<article><h1 id="top">{title}</h1><p>Some <em>words</em> here.</p>{extra}
<a href="https://github.com/x/edit/main/{source}" rel="edit">edit</a></article></body></html>"""


def _site(root: Path, pages: dict[str, dict[str, str]], assets: dict[str, str] | None = None) -> Path:
    for name, parts in pages.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {"title": "T", "extra": "", "source": name, "up": "../" * name.count("/")} | parts
        path.write_text(PAGE.format(**fields), encoding="utf-8")
    for name, text in (assets or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _pair(tmp_path: Path, extra_b: str = "", title_b: str = "T") -> tuple[Path, Path]:
    linked = '<a href="../b/#top">b</a>'
    a = _site(tmp_path / "a", {"index.html": {}, "a/index.html": {"extra": linked}, "b/index.html": {}})
    b = _site(
        tmp_path / "b",
        {"index.html": {"title": title_b}, "a/index.html": {"extra": linked + extra_b}, "b/index.html": {}},
        {"assets/javascripts/bundle.123.js": "x", "search.json": "{}"},
    )
    return a, b


def test_article_text_title_and_links_are_read(tmp_path):
    site = _site(tmp_path, {"p/index.html": {"title": "A &amp; B", "extra": '<img src="pic.png">'}})
    view = read_page(site / "p/index.html")
    assert view.title == "A & B"
    assert view.text == "A & B Some words here. edit"  # the script and the navigation are not text
    assert view.edit == "https://github.com/x/edit/main/p/index.html"
    assert view.links == ["../index.html", "pic.png", view.edit] and view.ids == {"top"}


def test_identical_builds_are_the_same_and_theme_assets_are_ignored(tmp_path):
    a, b = _pair(tmp_path)
    diff = compare_sites(a, b)
    assert diff.pages == (3, 3)
    assert diff.only_b == ["search.json"] and diff.only_a == []  # the hashed bundle is a theme asset
    assert diff.titles == [] and diff.texts == [] and diff.edits == []
    assert diff.clean()


def test_differences_and_links_that_reach_nothing_are_named(tmp_path):
    a, b = _pair(tmp_path, extra_b=' <a href="../b/#gone">x</a> <a href="../missing/">y</a>', title_b="Home - T")
    diff = compare_sites(a, b)
    assert diff.titles == [("index.html", "T", "Home - T")]
    assert diff.texts == ["a/index.html", "index.html"]  # the title is also the heading
    assert diff.broken_a == []
    assert diff.broken_b == [("a/index.html", "../b/#gone"), ("a/index.html", "../missing/")]
    assert not diff.clean() and not diff.same()


def test_command_exit_status(tmp_path, capsys):
    a, b = _pair(tmp_path)
    assert main(["compare-sites", str(a), str(b)]) == 0
    broken_a, broken_b = _pair(tmp_path / "second", extra_b='<a href="../nowhere.html">n</a>')
    assert main(["compare-sites", str(broken_a), str(broken_b)]) == 1
    assert "('a/index.html', '../nowhere.html')" in capsys.readouterr().out
    assert main(["compare-sites", str(a), str(tmp_path / "empty")]) == 2
    assert "is not a built site" in capsys.readouterr().err
