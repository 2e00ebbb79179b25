"""The built site in a real browser: search ranks, the All papers filter, table sort, BibTeX copy,
the phone menu, console errors and page overflow.

Chromium comes from the system (Debian package ``chromium``; ``.ci/run`` installs it), driven by
Playwright (``test`` extra) with ``executable_path`` set: Playwright's own browser download needs
the network. Without a browser the tests skip with the reason, except in CI (``CI=true``), where
they fail. The site is served from 127.0.0.1 only; every other request is refused.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus, urlparse

import pytest

BROWSER_ENV = "ATLAS_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Query -> the page a researcher means by it; each must be in Material's top 3 (pages, in order).
SEARCH_QUERIES = {
    "KV cache": "taxonomy/efficiency/decoding/kv-cache-compression/",
    "token pruning": "taxonomy/efficiency/prefilling/prefilling-token-compression/",
    "speculative decoding": "taxonomy/efficiency/decoding/speculative-decoding/",
    "hallucination": "taxonomy/hallucination/",
    "contrastive decoding": "taxonomy/hallucination/contrastive-decoding/",
    "FastV": "papers/chen2024image/",
    "ToMe": "papers/bolya2023token/",
    "HybridKV": "papers/zeng2026hybridkv/",
    "SnapKV": "papers/li2024snapkv/",
    "H2O": "papers/zhang2023h2o/",
    "KIVI": "papers/liu2024kivi/",
    "VisionZip": "papers/yang2025visionzip/",
    "Ada-KV": "papers/feng2025adakv/",
    "StreamingLLM": "papers/xiao2024efficient/",
}

PAGES = {
    "home": "",
    "all papers": "all-papers/",
    "topic": "taxonomy/efficiency/",
    "family": "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level/",
    "paper": "papers/zeng2026hybridkv/",
    "notebook": "notebooks/decoding/hybridkv/",
    "results": "results/",
    "implementations": "implementations/",
    "api": "implementations/reference_impls.decoding.snapkv/",
}


def _chromium() -> str | None:
    configured = os.environ.get(BROWSER_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def _unavailable(reason: str) -> None:
    message = f"browser tests need Chromium and Playwright: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI must not skip them; .ci/run installs Chromium)")
    pytest.skip(message + " (Debian: apt-get install chromium; pip install -e '.[test]')")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    executable = _chromium()
    if executable is None:
        _unavailable(f"no Chromium found (looked for {', '.join(CANDIDATES)} on PATH and ${BROWSER_ENV})")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *arguments) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(built_site: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(built_site / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Session:
    """A browser context that refuses every request outside the local site and records errors."""

    def __init__(self, browser, base_url: str, width: int, height: int = 900, **options):
        self.base = base_url
        self.context = browser.new_context(viewport={"width": width, "height": height}, **options)
        self.context.route("**/*", self._route)
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(f"exception: {error}"))
        self.page.on("console", self._console)

    def _local(self, url: str) -> bool:
        return url.startswith(self.base) or url.startswith(("data:", "blob:", "about:"))

    def _route(self, route) -> None:
        if self._local(route.request.url):
            route.continue_()
        else:
            route.abort()

    def _console(self, message) -> None:
        location = (message.location or {}).get("url", "")
        # Refused external requests (the header's GitHub widget) are the test's doing, not the site's.
        if message.type == "error" and (not location or self._local(location)):
            self.errors.append(f"console: {message.text} ({location})")

    def open(self, path: str) -> object:
        self.page.goto(self.base + path, wait_until="load")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def desktop(browser, base_url) -> Iterator[Session]:
    session = Session(browser, base_url, 1400)
    yield session
    session.close()


@pytest.fixture
def phone(browser, base_url) -> Iterator[Session]:
    session = Session(browser, base_url, 390, 844, is_mobile=True, has_touch=True, device_scale_factor=2)
    yield session
    session.close()


def _result_pages(page, base: str) -> list[str]:
    """Material's result list: one item per page, best first (sections of a page stay with it)."""
    hrefs = page.eval_on_selector_all(".md-search-result__list > li > a", "links => links.map(a => a.href)")
    pages = [urlparse(href).path.lstrip("/") for href in hrefs]
    return list(dict.fromkeys(pages))


def test_search_puts_the_intended_page_in_the_top_3(desktop):
    ranks = {}
    for query, intended in SEARCH_QUERIES.items():
        page = desktop.open(f"?q={quote_plus(query)}")
        page.wait_for_selector(".md-search-result__list > li", timeout=15000)
        found = _result_pages(page, desktop.base)
        ranks[query] = found.index(intended) + 1 if intended in found else None
    print("search ranks:", json.dumps(ranks))
    assert all(rank is not None and rank <= 3 for rank in ranks.values()), ranks
    assert desktop.errors == []


def test_api_source_is_not_in_the_search_index(built_site):
    index = json.loads((built_site / "site" / "search" / "search_index.json").read_text())
    locations = [doc["location"] for doc in index["docs"]]
    assert not [location for location in locations if location.startswith("implementations/reference_impls.")]
    assert "implementations/" in locations  # the module list stays searchable
    assert not any("@misc{" in doc["text"] or "@inproceedings{" in doc["text"] for doc in index["docs"])


def _rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#atlas-filter-results tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))"
    )


def test_all_papers_filter_works_and_lives_in_the_address(desktop, built_site):
    index = json.loads((built_site / "site" / "assets" / "generated" / "papers-index.json").read_text())
    total = len(index["papers"])
    page = desktop.open("all-papers/")
    page.wait_for_selector("#atlas-filter-results tbody tr")
    assert page.inner_text("#atlas-filter-count") == f"{total} of {total} papers"

    page.fill("input[name=q]", "snapkv")
    page.wait_for_function("() => location.search.includes('q=snapkv')")
    titles = [row[1] for row in _rows(page)]
    assert any(title.startswith("SnapKV") for title in titles) and len(titles) < total

    page.fill("input[name=q]", "")
    page.check("input[name=impl]")
    page.wait_for_function("() => location.search.includes('impl=1')")
    implemented = [paper for paper in index["papers"] if paper.get("i")]
    rows = _rows(page)
    assert len(rows) == len(implemented) > 10 and all(row[-1] == "implemented here" for row in rows)

    # A shared link restores the same view.
    expected = [
        paper
        for paper in index["papers"]
        if "kv-cache-compression" in paper["f"] and paper["y"] >= 2025 and paper.get("c")
    ]
    page = desktop.open("all-papers/?family=kv-cache-compression&y0=2025&code=1")
    page.wait_for_selector("#atlas-filter-count:has-text('of')")
    assert page.inner_text("#atlas-filter-count") == f"{len(expected)} of {total} papers"
    assert page.is_checked("input[name=code]") and page.input_value("select[name=family]") == "kv-cache-compression"
    assert sorted(int(row[0]) for row in _rows(page)) == sorted(paper["y"] for paper in expected)
    assert desktop.errors == []


def _number(text: str) -> float:
    return float(text.replace("\u202f", "").replace("\u2009", "").replace(",", "").replace(" ", ""))


def test_numeric_columns_sort_by_value_from_the_keyboard(desktop):
    page = desktop.open(PAGES["family"])
    header = page.locator("div.sortable table thead th", has_text="Resident KV").first
    table = header.locator("xpath=ancestor::table")
    column = header.evaluate("th => th.cellIndex")
    assert header.get_attribute("aria-sort") == "none"
    button = header.locator("button")
    button.focus()
    page.keyboard.press("Enter")
    assert header.get_attribute("aria-sort") == "ascending"
    values = table.evaluate(f"t => Array.from(t.tBodies[0].rows, r => r.cells[{column}].textContent.trim())")
    numbers = [_number(value) for value in values if value]
    assert len(numbers) > 3 and numbers == sorted(numbers), values
    assert any(value >= 10000 for value in numbers)  # thousands separators present
    page.keyboard.press("Space")
    assert header.get_attribute("aria-sort") == "descending"
    values = table.evaluate(f"t => Array.from(t.tBodies[0].rows, r => r.cells[{column}].textContent.trim())")
    numbers = [_number(value) for value in values if value]
    assert numbers == sorted(numbers, reverse=True)
    assert desktop.errors == []


def test_bibtex_copy_puts_the_entry_on_the_clipboard(browser, base_url):
    session = Session(browser, base_url, 1400, permissions=["clipboard-read", "clipboard-write"])
    try:
        page = session.open(PAGES["paper"])
        shown = page.inner_text("pre.bibtex code")
        page.hover("pre.bibtex")
        page.click("pre.bibtex button[data-md-type=copy]")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert copied.strip() == shown.strip() and copied.startswith("@inproceedings{zeng2026hybridkv,")
        assert session.errors == []
    finally:
        session.close()


@pytest.mark.parametrize("name", ["paper", "family"])
def test_phone_menu_lists_the_sections(phone, name):
    page = phone.open(PAGES[name])
    page.click("label.md-header__button[for=__drawer]")
    page.wait_for_timeout(400)
    links = page.locator(".md-sidebar--primary .md-nav--primary > .md-nav__list > .md-nav__item")
    visible = [text.strip() for text in links.all_inner_texts() if text.strip()]
    assert len(visible) >= 6 and any(text.startswith("All papers") for text in visible), visible
    assert phone.errors == []


# Elements that stick out past the screen's right edge, or past the box ("Run it", tips) holding
# them, except inside the containers that scroll on purpose (code blocks, the breadcrumbs). Material
# hides the page's horizontal overflow, so the page's scroll width alone would not show them.
STICKING_OUT = """() => {
  const screen = document.documentElement.clientWidth, found = [];
  for (const element of document.querySelectorAll('.md-content *')) {
    let parent = element.parentElement, scrolls = false;
    for (; parent; parent = parent.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(parent).overflowX)) { scrolls = true; break; }
    }
    const box = element.getBoundingClientRect();
    if (scrolls || !box.width) continue;
    const holder = element.closest('.admonition');
    const limit = holder && holder !== element ? Math.min(screen, holder.getBoundingClientRect().right) : screen;
    if (box.right > limit + 1) found.push(`${element.tagName}: ${element.textContent.trim().slice(0, 60)}`);
  }
  return found.slice(0, 5);
}"""


def test_pages_have_no_errors_and_no_sideways_scroll_on_a_phone(phone):
    overflowing = {}
    for name, path in PAGES.items():
        page = phone.open(path)
        if name == "all papers":
            page.wait_for_selector("#atlas-filter-results tbody tr")
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        if width[0] > width[1]:
            overflowing[name] = width
        sticking = page.evaluate(STICKING_OUT)
        if sticking:
            overflowing[name] = sticking
    assert overflowing == {}
    assert phone.errors == []


def test_home_counts_sit_in_two_even_columns_on_a_phone(phone):
    page = phone.open(PAGES["home"])
    boxes = page.eval_on_selector_all(
        ".atlas-counts > div",
        "cells => cells.map(cell => { const box = cell.getBoundingClientRect(); return [box.left, box.width]; })",
    )
    assert len(boxes) == 5
    assert len({round(left) for left, _ in boxes}) == 2, boxes  # not rows of one, two or three
    assert len({round(width) for _, width in boxes}) == 1, boxes


def test_tables_are_not_clipped_on_a_desktop(desktop):
    clipped = {}
    for name in ("family", "topic", "results", "paper"):
        page = desktop.open(PAGES[name])
        hidden = page.evaluate("""() => Array.from(document.querySelectorAll('.md-typeset__scrollwrap'))
            .map(w => w.scrollWidth - w.clientWidth).filter(extra => extra > 1)""")
        if hidden:
            clipped[name] = hidden
    assert clipped == {}
    assert desktop.errors == []


def test_home_title_is_the_site_name(desktop):
    page = desktop.open(PAGES["home"])
    assert page.title() == "LVLM Atlas"
