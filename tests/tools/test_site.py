"""Build the whole site from a copy of the data; open the pages and check every internal link."""

from __future__ import annotations

import html.parser
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tools.site.build import generate_pages

from .conftest import EVIL, make_repo


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


@pytest.fixture(scope="module")
def built(built_site) -> Path:
    """The whole site, built once per session (the browser tests use the same build)."""
    return built_site


def test_pages_exist_for_every_entry_and_node(built):
    site = built / "site"
    entries = list((built / "papers").glob("*.yaml"))
    assert len(list((site / "papers").glob("*/index.html"))) == len(entries)
    for page in (
        "index.html",
        "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level/index.html",
        "taxonomy/hallucination/hallucination-unlearning/index.html",
        "taxonomy/continual-ad/parameter-isolation/index.html",
        "implementations/index.html",
        "notebooks/index.html",
        "results/index.html",
        "tags/index.html",
        "references.bib",
        "papers.json",
        "schemas/paper.schema.json",
        "about/index.html",
        "contributing/index.html",
    ):
        assert (site / page).is_file(), page
    assert len(json.loads((site / "papers.json").read_text())) == len(entries)
    home = (site / "index.html").read_text()
    assert "papers-by-year.svg" in home and f"<strong>{len(entries)}</strong>" in home


def test_paper_page_shows_metadata_reported_numbers_and_bibtex(built):
    page = (built / "site" / "papers" / "zeng2026hybridkv" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    assert "Bowen Zeng" in text and "@inproceedings{zeng2026hybridkv," in text
    assert "58.94" in page and "Table 8 of the seed survey" in page  # reported values are not rounded
    # The paper template replaces the site navigation by a short drawer of the top-level sections.
    assert "atlas-short-nav" in page and page.count('class="md-nav__link"') < 20
    assert "kv-bit-level/" not in page.split("atlas-short-nav", 1)[1].split("</nav>", 1)[0]
    family = (
        built
        / "site"
        / "taxonomy"
        / "efficiency"
        / "decoding"
        / "kv-cache-compression"
        / "kv-head-level"
        / "index.html"
    ).read_text()
    assert "zeng2026hybridkv" in family and "Reported by papers" in family


def test_method_package_has_an_api_page_and_its_design_on_the_family_page(built):
    site = built / "site"
    assert (site / "implementations" / "reference_impls.decoding.hybridkv" / "index.html").is_file()
    family = site / "taxonomy" / "efficiency" / "decoding" / "kv-cache-compression" / "kv-head-level" / "index.html"
    family = family.read_text()
    # mkdocs --strict has checked that the README's own #anchors resolve on this page.
    assert 'id="design-reference-impls-decoding-hybridkv"' in family
    assert 'id="45-stage-3b-dynamic-heads-chunk-wise-retrieval"' in family
    assert 'href="#45-stage-3b-dynamic-heads-chunk-wise-retrieval"' in family


def test_entry_text_is_escaped(built):
    page = (built / "site" / "papers" / "evil2026entry" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript:x"' not in page
    family = (
        built
        / "site"
        / "taxonomy"
        / "efficiency"
        / "prefilling"
        / "prefilling-token-compression"
        / "prefilling-attention-guided"
        / "index.html"
    ).read_text()
    assert "<script>alert(1)" not in family and "&lt;script&gt;" in family


def test_block_syntax_snippets_and_html_in_data_stay_text(built):
    site = built / "site"
    family = site / "taxonomy/efficiency/prefilling/prefilling-token-compression/prefilling-attention-guided/index.html"
    pages = {
        "cr paper": site / "papers/cr2026entry/index.html",
        "family": family,
        "results": site / "results/index.html",
    }
    for name, path in pages.items():
        page = path.read_text()
        assert "make_sandbox" not in page, name  # no mkdocstrings block for tools.sandbox
        assert "<details" not in page, name
        assert "site_name: LVLM Atlas" not in page, name  # mkdocs.yml not included by a snippet
        assert "<script>alert(" not in page, name
    summary = pages["cr paper"].read_text()
    assert "<blockquote>" in summary and "&lt;script&gt;alert(4)&lt;/script&gt; &gt; end" in summary
    family = family.read_text()
    assert (
        '<p>Found <em>this</em>.</p>\n<p>&#58;&#58;&#58; tools.sandbox</p>\n<p>--8&lt;-- "mkdocs.yml"</p>\n'
        "<p>&lt;script&gt;alert(2)&lt;/script&gt;</p>"
    ) in family
    assert (
        "<code>python -m reference_impls.bench.tokens --tag '`--8&lt;-- \"mkdocs.yml\"`' "
        "&lt;script&gt;alert(3)&lt;/script&gt;</code>"
    ) in family


def test_every_internal_link_resolves(built):
    site = built / "site"
    broken = []
    pages = list(site.rglob("*.html"))
    assert len(pages) > 600
    for page in pages:
        if page.name == "404.html":
            continue  # served from any depth, so mkdocs writes site-absolute links there
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            parsed = urlparse(link)
            if parsed.scheme or link.startswith(("#", "mailto:", "//")):
                continue
            target = (page.parent / unquote(parsed.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {link}")
    assert broken == [], broken[:20]


def test_bad_data_stops_the_build_and_writes_nothing(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    assert generate_pages(repo, execute_notebooks=False) == 0
    before = {path: path.stat().st_mtime_ns for path in (repo / "docs").rglob("*") if path.is_file()}
    (repo / "papers" / "evil2026entry.yaml").write_text(EVIL.replace("year: 2026", "year: soon"))
    assert generate_pages(repo, execute_notebooks=False) == 1
    assert "nothing was written" in capsys.readouterr().err
    after = {path: path.stat().st_mtime_ns for path in (repo / "docs").rglob("*") if path.is_file()}
    assert after == before


def test_contributing_steps_are_one_numbered_list(built):
    page = (built / "site" / "contributing" / "index.html").read_text()
    section = page.split('id="add-a-paper-in-three-steps"', 1)[1].split("<h2", 1)[0]
    assert section.count("<ol>") == 1 and section.count("<li>") >= 3  # not 1, 1, 2


def test_home_title_and_counts_agree_with_the_taxonomy(built):
    site = built / "site"
    home = (site / "index.html").read_text()
    assert "<title>LVLM Atlas</title>" in home
    taxonomy = (site / "taxonomy" / "index.html").read_text()
    for stage, count in re.findall(r'href="taxonomy/efficiency/(\w+)/">\w+</a> (\d+)', home):
        assert re.search(rf'href="efficiency/{stage}/">[^<]+</a> \({count}\)', taxonomy), (stage, count)


def _outside_code(page: str) -> str:
    """A page without its source listings and code blocks (where reST may show as written)."""
    page = re.sub(r'<details class="quote".*?</details>', "", page, flags=re.S)
    return re.sub(r"<pre.*?</pre>|<code>.*?</code>", "", page, flags=re.S)


def test_api_pages_show_no_raw_rest_roles_or_literal_markers(built):
    pages = list((built / "site" / "implementations").glob("reference_impls.*/index.html"))
    assert len(pages) > 20
    raw = []
    for path in pages:
        text = _outside_code(path.read_text(encoding="utf-8"))
        raw += [
            f"{path.parent.name}: {match.group()}"
            for match in re.finditer(r":(?:func|class|meth|mod|attr|data|exc|obj):`|\w::\s*<", text)
        ]
    assert raw == [], raw[:10]
    compare = (built / "site/implementations/reference_impls.hallucination.compare/index.html").read_text()
    # A :mod: role became a working link to the module's own API page.
    assert (
        'href="../reference_impls.hallucination.contrastive_decoding/#reference_impls.hallucination.contrastive_decoding"'
        in compare
    )
    h2o = (built / "site/implementations/reference_impls.decoding.h2o/index.html").read_text()
    assert "Example::" not in _outside_code(h2o) and 'H2O</span><span class="p">(</span><span class="n">budget' in h2o


def test_edit_buttons_open_the_file_each_page_is_built_from(built):
    site, edit = built / "site", "https://github.com/lvlm-atlas/lvlm-atlas/edit/main/"
    expected = {
        "papers/zeng2026hybridkv/index.html": "papers/zeng2026hybridkv.yaml",
        "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level/index.html": "taxonomy/efficiency.yaml",
        "notebooks/decoding/hybridkv/index.html": "notebooks/decoding/hybridkv.py",
        "implementations/reference_impls.decoding.h2o/index.html": "reference_impls/decoding/h2o.py",
        "contributing/index.html": "CONTRIBUTING.md",
        "about/index.html": "docs/about.md",
        "index.html": None,
        "all-papers/index.html": None,
        "changes/index.html": None,
    }
    for page, source in expected.items():
        links = re.findall(
            r'<a href="([^"]+)" title="[^"]*" class="md-content__button md-icon" rel="edit">',
            (site / page).read_text(encoding="utf-8"),
        )
        assert links == ([edit + source] if source else []), page
    missing = []
    for path in site.rglob("*.html"):
        for link in re.findall(r'<a href="([^"]+)"[^>]*rel="edit"', path.read_text(encoding="utf-8")):
            if not link.startswith(edit) or not (built / link.removeprefix(edit)).exists():
                missing.append(f"{path.relative_to(site)} -> {link}")
    assert missing == [], missing[:10]


def test_every_page_announces_the_feed_and_the_changelog_links_new_entries(built):
    site = built / "site"
    for page in ("index.html", "papers/zeng2026hybridkv/index.html", "changes/index.html"):
        assert 'type="application/atom+xml"' in (site / page).read_text(encoding="utf-8"), page
    assert (site / "feed.xml").is_file()
    changes = (site / "changes" / "index.html").read_text(encoding="utf-8")
    newest = ET.fromstring((site / "feed.xml").read_bytes()).find("{http://www.w3.org/2005/Atom}entry")
    key = newest.findtext("{http://www.w3.org/2005/Atom}id").rstrip("/").rsplit("/", 1)[1]
    assert f'href="../papers/{key}/"' in changes
    paper = (site / "papers" / "zeng2026hybridkv" / "index.html").read_text(encoding="utf-8")
    # The copy the tests build from is not a git checkout: the page says so rather than guess a date.
    assert "last updated not known (no git history in this copy)" in paper
    assert "Related papers" in paper and "Same family" in paper


def test_family_pages_list_the_main_results_before_the_ablations(built):
    """ToyVLM v1's question-first results are kept for comparison only: every page shows them after
    the results on the model the findings describe, whatever their ids sort as."""
    from tools.results import load_all_results
    from tools.site import markdown as md

    results = load_all_results(built)
    is_ablation = {md.text(data["title"]): bool(data.get("ablation")) for data in results}
    mixed = 0
    for page in (built / "docs").rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        if "## Reproduced results" not in text:
            continue
        section = text.split("## Reproduced results", 1)[1]
        headings = [line[4:].removesuffix(" " + md.NOT_INDEXED) for line in section.splitlines() if line[:4] == "### "]
        flags = [is_ablation[heading] for heading in headings if heading in is_ablation]
        assert flags == sorted(flags), f"{page.relative_to(built)}: {headings}"
        mixed += True in flags and False in flags
    assert mixed >= 5  # pages that show both kinds, so the order was tested


def test_results_on_the_question_first_model_are_marked_as_ablations():
    from reference_impls.common.toyvlm import ABLATION_TITLE
    from tools.results import load_all_results

    for data in load_all_results(Path(__file__).resolve().parents[2]):
        assert bool(data.get("ablation")) == (ABLATION_TITLE in data["title"]), data["id"]
