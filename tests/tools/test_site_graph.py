"""The linked graph (paper <-> implementation <-> notebook <-> results <-> family) and the pages
that show it, generated without mkdocs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.catalog import load_catalog
from tools.results import load_all_results
from tools.site.allpapers import papers_index_json
from tools.site.data import SiteData
from tools.site.graph import Graph, card_alias, card_paper
from tools.site.implementations import discover_modules
from tools.site.notebooks import collapse_repeated_output, discover_notebooks, notebook_title
from tools.site.pages import node_md, paper_md

from .conftest import ROOT


@pytest.fixture(scope="module")
def site() -> SiteData:
    catalog = load_catalog(ROOT)
    assert not catalog.errors
    graph = Graph(catalog, discover_modules(ROOT), discover_notebooks(ROOT), load_all_results(ROOT))
    return SiteData(catalog, graph)


def test_paper_cards_name_papers_and_methods():
    card = "FastV: prune visual tokens once.\n\nPaper: arXiv 2403.06764\nUpstream: none public\n"
    assert card_paper(card) == "2403.06764" and card_alias(card) == "FastV"
    assert card_alias("Ada-KV: Optimizing KV Cache Eviction") == "Ada-KV"
    assert card_alias("Random visual-token pruning: the baseline") is None  # a phrase, not a name
    assert card_paper("Related: arXiv 2403.06764") is None


def test_implemented_papers_come_from_the_cards(site):
    graph = site.graph
    assert graph.modules_of_entry["chen2024image"] == ["reference_impls.prefilling.fastv"]
    assert graph.modules_of_entry["zhang2023h2o"] == ["reference_impls.decoding.h2o"]
    assert graph.modules_of_entry["zeng2026hybridkv"] == ["reference_impls.decoding.hybridkv"]  # not its parts
    # Baselines cite the paper they are compared in; the entry's own implementation field wins.
    assert graph.modules_of_entry["fang2026normality"] == ["reference_impls.continual_ad.hfolb"]
    assert len(graph.modules_of_entry) >= 25
    by_key = site.catalog.by_key()
    assert graph.aliases(by_key["chen2024image"]) == ["FastV"]
    assert graph.aliases(by_key["feng2025adakv"]) == []  # its title already starts with Ada-KV


def test_notebooks_pair_with_the_module_they_import(site):
    graph = site.graph
    assert graph.notebooks_of_module("reference_impls.decoding.hybridkv") == ["notebooks/decoding/hybridkv.py"]
    assert graph.notebooks_of_module("reference_impls.decoding.adakv") == ["notebooks/decoding/adakv.py"]


def test_paper_page_has_run_it_box_and_reproduced_rows(site):
    entry = site.catalog.by_key()["li2024snapkv"]
    page = paper_md(entry, site)
    assert '!!! example "Run it"' in page
    assert "`from reference_impls.decoding.snapkv import SnapKV" in page
    assert "../notebooks/decoding/kv_token_level.md" in page
    assert "`python -m reference_impls.bench.kv_quality" in page
    assert "## Reproduced by our code" in page and "boost: 4" in page
    assert "(https://github.com/lvlm-atlas/lvlm-atlas/edit/main/papers/li2024snapkv.yaml)" in page


def test_family_page_badges_and_titles_in_reported_table(site):
    node = site.taxonomy.by_id["kv-head-level"]
    page = node_md(node, site, {})
    assert (
        '[<span class="atlas-badge">implemented here</span>]'
        "(../../../../implementations/reference_impls.decoding.hybridkv.md)" in page
    )
    assert "[HybridKV&#58; Hybrid KV Cache Compression" in page  # reported rows show titles, not keys
    assert '!!! example "Run it"' in page
    prefilling = node_md(site.taxonomy.by_id["prefilling-token-compression"], site, {})
    assert '<span class="atlas-aka">(token pruning, visual token pruning)</span>' in prefilling


def test_papers_index_is_compact_and_complete(site):
    index = json.loads(papers_index_json(site))
    papers = {paper["k"]: paper for paper in index["papers"]}
    assert len(papers) == len(site.catalog.entries)
    fastv = papers["chen2024image"]
    assert fastv["i"] == "reference_impls.prefilling.fastv" and fastv["n"] == ["FastV"]
    assert {"prefilling-attention-guided", "prefilling-token-compression", "prefilling", "efficiency"} <= set(
        fastv["f"]
    )
    assert len(papers_index_json(site).encode()) / len(papers) < 600  # bytes per entry


def test_repeated_output_lines_are_shown_once():
    warning = "    only 2 text tokens after the last visual token: using the last 8 positions as window"
    body = "\n".join(
        ["# Title", "", "```python", warning, warning, "```", warning, "", warning, "", "    short", "    short"]
    )
    collapsed = collapse_repeated_output(body)
    assert collapsed.count("only 2 text tokens") == 3  # twice in the code block, once in the output
    assert "[printed 2 times on this page; shown once]" in collapsed
    assert collapsed.count("    short") == 2  # short lines are left alone
    assert notebook_title("notebooks/x.py", body) == "Title"


def test_taxonomy_aliases_are_loaded(site):
    assert site.taxonomy.by_id["prefilling-token-compression"].aliases == ["token pruning", "visual token pruning"]
    assert Path(ROOT / "taxonomy" / "taxonomy.schema.json").read_text().count('"aliases"') == 1


def test_chart_series_keep_one_style_and_unrelated_points_are_not_joined():
    from tools.site.charts import results_chart, series_styles

    styles = series_styles(["snapkv", "h2o", "full"])
    assert styles == series_styles(["full", "h2o", "snapkv", "snapkv"])  # order and repeats do not matter
    rows = [
        {"m": "h2o", "b": 0.1, "a": 50},
        {"m": "h2o", "b": 0.2, "a": 60},
        {"m": "full", "b": 1.0, "a": 100},
        {"m": "full", "b": 1.0, "a": 90},
    ]  # two configurations at one x
    svg = results_chart(rows, "b", "a", "m", styles=styles)
    assert styles["h2o"][0].lower() in svg.lower() and styles["full"][0].lower() in svg.lower()
    both = results_chart(rows, "b", "a", "m", styles={"h2o": ("#0072B2", "o"), "full": ("#0072B2", "o")})
    assert "#d55e00" in both.lower()  # a clash inside one chart is resolved


def test_every_module_gets_the_results_that_name_its_registered_method(site):
    # Results rows use the registry's name (``block-sparse``, ``op-skip``), the module is ``block_sparse``:
    # a module's page and "Run it" box must still find every file of its family that names it.
    from reference_impls.registry import all_methods

    graph = site.graph
    checked = 0
    for spec in all_methods():
        if spec.module.rsplit(".", 1)[-1] != spec.name.replace("-", "_"):
            continue  # a variant registered in another method's module (its rows are that module's variants)
        families = {node.id for node in graph.families_of_module.get(spec.module, [])}
        naming = {
            data["id"]
            for data in graph.results
            if families & set(data.get("families", [])) and any(row.get("method") == spec.name for row in data["rows"])
        }
        found = {data["id"] for data in graph.results_of_module(spec.module)}
        assert naming <= found, f"{spec.module}: results naming {spec.name!r} not linked: {sorted(naming - found)}"
        checked += bool(naming) and "-" in spec.name
    assert checked >= 2  # block-sparse and op-skip at least
