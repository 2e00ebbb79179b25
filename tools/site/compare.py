"""``compare-sites``: what differs between two builds of the site (say mkdocs' and Zensical's).

Both folders are read as built HTML: the pages each holds, every page's title, its article text
(what a reader sees, scripts and styles left out), its edit link and its internal links, each of
which must reach a file of the same build (and, for ``#anchor`` links to a page, an element with
that id). Theme assets (``assets/javascripts``, ``assets/stylesheets``) are named by content hashes
that differ between engines, so they are left out of the file comparison.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

__all__ = ["PageView", "SiteDiff", "compare_sites", "read_page"]

_THEME_ASSETS = ("assets/javascripts/", "assets/stylesheets/")
_BASE = "http://site/"


@dataclass
class PageView:
    """What a built page shows: title, article text, edit link, internal link targets and ids."""

    title: str = ""
    text: str = ""
    edit: str | None = None
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.view = PageView()
        self.words: list[str] = []
        self.in_title = False
        self.article = self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if "id" in found:
            self.view.ids.add(found["id"])
        if tag == "a" and found.get("href"):
            self.view.links.append(found["href"])
            if found.get("rel") == "edit":
                self.view.edit = found["href"]
        elif tag == "img" and found.get("src"):
            self.view.links.append(found["src"])
        self.in_title = self.in_title or tag == "title"
        self.article += tag == "article"
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.in_title = self.in_title and tag != "title"
        self.article -= tag == "article"
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.view.title += data
        if self.article > 0 and not self.hidden:
            self.words.extend(data.split())


def read_page(path: Path) -> PageView:
    reader = _Reader()
    reader.feed(path.read_text(encoding="utf-8", errors="replace"))
    reader.view.title = " ".join(reader.view.title.split())
    reader.view.text = " ".join(reader.words)
    return reader.view


@dataclass
class SiteDiff:
    """Differences between builds ``a`` and ``b``; paths relative to each site folder."""

    pages: tuple[int, int] = (0, 0)
    only_a: list[str] = field(default_factory=list)  # files (theme assets aside)
    only_b: list[str] = field(default_factory=list)
    titles: list[tuple[str, str, str]] = field(default_factory=list)  # (page, title in a, title in b)
    texts: list[str] = field(default_factory=list)  # pages whose article text differs
    edits: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    broken_a: list[tuple[str, str]] = field(default_factory=list)  # (page, link) reaching nothing
    broken_b: list[tuple[str, str]] = field(default_factory=list)

    def same(self) -> bool:
        return not (self.only_a or self.only_b or self.titles or self.texts or self.edits) and self.clean()

    def clean(self) -> bool:
        return not (self.broken_a or self.broken_b)


def _files(site: Path) -> set[str]:
    names = (path.relative_to(site).as_posix() for path in site.rglob("*") if path.is_file())
    return {name for name in names if not name.startswith(_THEME_ASSETS)}


def _broken(site: Path, page: str, view: PageView, ids: dict[Path, set[str]]) -> list[tuple[str, str]]:
    broken = []
    for link in view.links:
        target = urlparse(urljoin(_BASE + page, link))
        if f"{target.scheme}://{target.netloc}/" != _BASE:
            continue  # another site
        path = site / unquote(target.path).lstrip("/")
        if target.path.endswith("/"):
            path = path / "index.html"
        if not path.is_file():
            broken.append((page, link))
        elif target.fragment and path.suffix == ".html":
            if path not in ids:
                ids[path] = read_page(path).ids
            if unquote(target.fragment) not in ids[path]:
                broken.append((page, link))
    return broken


def compare_sites(a: Path, b: Path) -> SiteDiff:
    files_a, files_b = _files(a), _files(b)
    pages_a = {name for name in files_a if name.endswith(".html")}
    pages_b = {name for name in files_b if name.endswith(".html")}
    diff = SiteDiff(pages=(len(pages_a), len(pages_b)))
    diff.only_a, diff.only_b = sorted(files_a - files_b), sorted(files_b - files_a)
    ids_a: dict[Path, set[str]] = {}
    ids_b: dict[Path, set[str]] = {}
    for page in sorted(pages_a | pages_b):
        view_a = read_page(a / page) if page in pages_a else None
        view_b = read_page(b / page) if page in pages_b else None
        if view_a:
            diff.broken_a += _broken(a, page, view_a, ids_a)
        if view_b:
            diff.broken_b += _broken(b, page, view_b, ids_b)
        if not (view_a and view_b):
            continue
        if view_a.title != view_b.title:
            diff.titles.append((page, view_a.title, view_b.title))
        if view_a.text != view_b.text:
            diff.texts.append(page)
        if view_a.edit != view_b.edit:
            diff.edits.append((page, view_a.edit, view_b.edit))
    return diff


def _show(label: str, items: list, limit: int = 10) -> None:
    print(f"{label}: {len(items)}")
    for item in items[:limit]:
        print(f"  {item}")


def compare_command(a: Path, b: Path) -> int:
    """Print what differs; exit 1 when either build has a link that reaches nothing."""
    for site in (a, b):
        if not (site / "index.html").is_file():
            print(f"compare-sites: {site} is not a built site (no index.html)", file=sys.stderr)
            return 2
    diff = compare_sites(a, b)
    print(f"HTML pages: {diff.pages[0]} in {a}, {diff.pages[1]} in {b}")
    _show(f"files only in {a} (theme assets aside)", diff.only_a)
    _show(f"files only in {b} (theme assets aside)", diff.only_b)
    _show("page titles that differ", diff.titles)
    _show("pages whose article text differs", diff.texts)
    _show("edit links that differ", diff.edits)
    _show(f"internal links reaching nothing in {a}", diff.broken_a)
    _show(f"internal links reaching nothing in {b}", diff.broken_b)
    return 0 if diff.clean() else 1
