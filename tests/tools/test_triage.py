"""``triage``: feeds in, known papers out, candidates with a suggested placement; ``new``/``bib import`` suggest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tools.catalog import load_catalog
from tools.paths import key_problem
from tools.triage import MAX_FEED_ITEMS, Classifier, FeedError, candidate_key, evaluate, feed_url, read_feed

from .conftest import ROOT
from .test_writes import snapshot

FEED = Path(__file__).parent / "data" / "triage_feed.xml"


def test_triage_drops_known_papers_and_writes_candidates(repo, run_tools):
    status, _, err = run_tools(repo, "triage", str(FEED))
    assert status == 0, err
    assert "skipped 'HybridKV (a later version, same arXiv id)': already in the catalog as zeng2026hybridkv" in err
    assert "skipped 'A renamed G-Prune preprint': already in the catalog as jiang2025kind" in err
    assert (
        "skipped 'normality-preserving continual industrial anomaly detection via orthogonal LoRA banks': "
        "already in the catalog as fang2026normality"
    ) in err
    assert "triage: 2 new candidate(s), 3 already in the catalog" in err
    written = sorted(path.name for path in (repo / "triage").glob("*.yaml"))
    assert written == ["fixture-orthogonal-lora-banks-2026.yaml", "fixture-query-guided-visual-2026.yaml"]
    data = yaml.safe_load((repo / "triage" / "fixture-query-guided-visual-2026.yaml").read_text(encoding="utf-8"))
    assert data["arxiv"] == "2699.00001"  # version stripped
    assert data["authors"] == ["Ada Lovelace", "Alan Turing"]
    assert data["sources"] == ["https://arxiv.org/abs/2699.00001"]
    assert len(data["suggested"]) == 3 and data["placement"] == [data["suggested"][0]["placement"]]
    assert sorted(path.name for path in (repo / "papers").glob("*.yaml")) == sorted(
        f"{key}.yaml"
        for key in (
            "fang2026normality",
            "fang2026superficial",
            "jiang2025kind",
            "zeng2026hybridkv",
            "zhang2026efficient",
        )
    )


def test_triage_refuses_papers_folder_and_existing_candidates(repo, run_tools):
    status, _, err = run_tools(repo, "triage", str(FEED), "--out", str(repo / "papers"))
    assert status == 1
    assert (
        f"triage: refused: --out {(repo / 'papers').resolve()} is inside papers/; candidates need review first" in err
    )
    assert run_tools(repo, "triage", str(FEED))[0] == 0
    status, _, err = run_tools(repo, "triage", str(FEED))
    assert status == 1
    assert "fixture-query-guided-visual-2026.yaml already exists (move or delete the earlier candidates)" in err


def test_triage_refuses_xml_with_entities(repo, run_tools, tmp_path):
    feed = tmp_path / "bomb.xml"
    feed.write_text('<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY a "aaaa">]><feed>&a;</feed>', encoding="utf-8")
    status, _, err = run_tools(repo, "triage", str(feed))
    assert status == 1
    assert f"triage: {feed}: refused: the XML declares a DOCTYPE or entities" in err


BIB_ITEM = "@misc{{{key},\n  title = {{{title}}},\n  year = {{2026}},\n}}\n"


def test_a_feed_key_that_is_not_a_plain_file_name_writes_nothing_anywhere(repo, run_tools, tmp_path):
    """A BibTeX feed's keys are data: ``../x``, an absolute path or an over-long name must not become a
    file outside ``--out`` (or an OSError half-way), and a good item beside them is not written either."""
    keys = {"good2026feed": "A Good Token Pruning Paper", "../../escaped2026": "Escaping Tokens"}
    keys[str(tmp_path / "absolute2026")] = "Absolute Tokens"
    keys["k" * 300] = "Long Tokens"
    feed = tmp_path / "hostile.bib"
    feed.write_text("".join(BIB_ITEM.format(key=key, title=title) for key, title in keys.items()), encoding="utf-8")
    before = snapshot(tmp_path)
    status, _, err = run_tools(repo, "triage", str(feed), "--out", "candidates")
    assert status == 1
    assert "triage: refusing key '../../escaped2026': the key must not contain a path separator" in err, err
    assert f"triage: refusing key '{tmp_path / 'absolute2026'}': the key must not contain a path separator" in err
    assert "the key is 300 characters long; at most 100 are allowed" in err
    assert err.rstrip().endswith("triage: nothing was written"), err
    assert snapshot(tmp_path) == before and not (repo / "candidates").exists()


def test_files_that_are_not_utf8_text_or_never_end_are_refused_with_file_and_line(repo, run_tools, tmp_path):
    feed = tmp_path / "latin1.csv"
    feed.write_bytes("title,arxiv\nA caf\u00e9 pruning paper,2611.00009\n".encode("latin-1"))
    status, _, err = run_tools(repo, "triage", str(feed), "--out", "-")
    assert status == 1
    assert f"triage: {feed}:2: not UTF-8 text (byte 0xe9 at column 6); save the file as UTF-8" in err, err
    bib = tmp_path / "latin1.bib"
    bib.write_bytes(BIB_ITEM.format(key="latin2026", title="Caf\u00e9 Tokens").encode("latin-1"))
    status, _, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    assert status == 1
    assert f"bib import: {bib}:2: not UTF-8 text (byte 0xe9 at column 15); save the file as UTF-8" in err, err
    with pytest.raises(FeedError, match="/dev/zero:1: the file holds more than 20,000,000 bytes; split it"):
        read_feed(Path("/dev/zero"))
    rows = tmp_path / "rows.csv"
    rows.write_text("title\n" + "".join(f"Paper {index}\n" for index in range(MAX_FEED_ITEMS + 1)), encoding="utf-8")
    with pytest.raises(FeedError, match=f"{MAX_FEED_ITEMS + 1} items; at most {MAX_FEED_ITEMS} are triaged at once"):
        read_feed(rows)


def test_feed_text_loses_control_characters_and_links_an_entry_could_not_hold(repo, run_tools, tmp_path):
    feed = tmp_path / "hostile.csv"
    feed.write_text(
        'title,url,doi,authors\n"Token\x1b[2J pruning\x00 for\x85 VLMs",javascript:alert(1),10.1234/a b,"Ann\x07 Bee"\n',
        encoding="utf-8",
    )
    status, out, err = run_tools(repo, "triage", str(feed), "--out", "candidates")
    assert status == 0, err
    assert f"triage: warning: {feed}: 'Token [2J pruning for VLMs': url 'javascript:alert(1)' left out" in err
    assert f"triage: warning: {feed}: 'Token [2J pruning for VLMs': doi '10.1234/a b' left out" in err
    assert not re.search("[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]", out + err), repr(err)
    [candidate] = (repo / "candidates").glob("*.yaml")
    data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
    assert (data["title"], data["authors"]) == ("Token [2J pruning for VLMs", ["Ann Bee"])
    assert "url" not in data and "doi" not in data


def test_csv_and_bibtex_feeds(tmp_path):
    csv_feed = tmp_path / "export.csv"
    csv_feed.write_text(
        'title,arxiv,abstract,authors,year\n"Fixture: A, B",2699.00009v2,Some text.,Ada Lovelace; Alan Turing,2026\n',
        encoding="utf-8",
    )
    assert read_feed(csv_feed) == [
        {
            "title": "Fixture: A, B",
            "arxiv": "2699.00009",
            "year": 2026,
            "summary": "Some text.",
            "authors": ["Ada Lovelace", "Alan Turing"],
        }
    ]
    bib_feed = tmp_path / "export.bib"
    bib_feed.write_text(
        "@misc{fix2026,\n  title = {Fixture Paper},\n  author = {Lovelace, Ada},\n  year = {2026},\n"
        "  eprint = {2699.00010v4}\n}\n",
        encoding="utf-8",
    )
    [item] = read_feed(bib_feed)
    assert (item["key"], item["arxiv"], item["authors"]) == ("fix2026", "2699.00010", ["Ada Lovelace"])


def test_candidate_keys_follow_the_catalog_style():
    taken = {"fixture-query-guided-visual-2026"}
    item = {"title": "Fixture: Query-Guided Visual Token Pruning", "year": 2026}
    assert candidate_key(item, taken) == "fixture-query-guided-visual-2026b"
    assert (
        candidate_key({"title": "Don't Prune the Tokens of an Image", "year": 2025}, taken)
        == "dont-prune-tokens-image-2025"
    )


def test_many_items_with_the_same_words_and_year_get_valid_distinct_keys():
    taken: set[str] = set()
    keys = [candidate_key({"title": "Token Pruning Study Models", "year": 2026}, taken) for _ in range(40)]
    assert len(set(keys)) == 40 and all(key_problem(key) is None for key in keys), keys
    assert keys[:3] == [
        "token-pruning-study-models-2026",
        "token-pruning-study-models-2026b",
        "token-pruning-study-models-2026c",
    ]
    assert keys[26:28] == ["token-pruning-study-models-2026-27", "token-pruning-study-models-2026-28"]


def test_classifier_ranks_the_obvious_family_first():
    catalog = load_catalog(ROOT)
    model = Classifier.from_catalog(catalog)
    suggestions = model.suggest({"title": "Heavy-hitter KV cache eviction for multimodal large language models"})
    assert len(suggestions) == 3
    assert suggestions[0][0] in {"kv-token-level", "kv-cache-compression"}, suggestions


def test_a_family_without_papers_can_be_suggested_from_its_own_description():
    catalog = load_catalog(ROOT)
    assert not [entry for entry in catalog.entries if "attention-reuse" in entry.data["placement"]]
    model = Classifier.from_catalog(catalog)
    suggestions = model.suggest({"title": "Reuse attention patterns across layers instead of recomputing them"})
    assert "attention-reuse" in [node_id for node_id, _ in suggestions], suggestions


def test_evaluate_counts_a_leaf_under_a_parent_only_placement_only_in_the_within_figures():
    catalog = load_catalog(ROOT)
    result = evaluate(catalog, folds=2)
    assert result["top1"] < result["top1_within"] and result["top3"] < result["top3_within"], result


def test_evaluate_prints_top1_and_top3(repo, run_tools):
    status, out, err = run_tools(repo, "triage", "--evaluate", "--folds", "2")
    assert status == 0, err
    assert re.fullmatch(
        r"triage classifier, 2-fold \(seed 0\) over 5 entries \(\d+ placement ids, titles (only|and \d+ summaries)\): "
        r"top-1 \d+\.\d%, top-3 \d+\.\d%; counting a leaf under a parent-only placement as right: "
        r"top-1 \d+\.\d%, top-3 \d+\.\d%\n",
        out,
    ), out


def test_evaluate_confusions_list_exactly_the_top3_misses(repo, run_tools):
    status, out, err = run_tools(repo, "triage", "--evaluate", "--folds", "2", "--confusions", "10")
    assert status == 0, err
    lines = out.splitlines()
    top3 = float(re.search(r"top-3 (\d+\.\d)%;", lines[0]).group(1))
    assert lines[1] == "most frequent misses (placement -> first suggestion, none of the top 3 right):"
    pairs = [re.fullmatch(r"  +(\d+)  (\S+(?: \+ \S+)*) -> (\S+)", line) for line in lines[2:]]
    assert all(pairs), lines
    assert sum(int(pair.group(1)) for pair in pairs) == round(5 * (1 - top3 / 100)), out


def test_new_without_placement_suggests_and_writes_nothing(repo, run_tools):
    status, out, err = run_tools(
        repo, "new", "fixture2026paper", "--title", "Orthogonal LoRA banks for anomaly detection", "--year", "2026"
    )
    assert status == 1
    assert out.startswith("new: suggested placements for 'Orthogonal LoRA banks for anomaly detection': ")
    assert len(re.findall(r"[a-z-]+ \(-?\d+\.\d\d\)", out)) == 3
    assert "new: no --placement given, nothing was written; rerun with --placement ID [ID ...]" in err
    assert not (repo / "papers" / "fixture2026paper.yaml").exists()


def test_bib_import_without_placement_suggests_and_writes_nothing(repo, run_tools, tmp_path):
    bib = tmp_path / "new.bib"
    bib.write_text("@misc{fix2026,\n  title = {Fixture Token Pruning},\n  year = {2026}\n}\n", encoding="utf-8")
    status, out, err = run_tools(repo, "bib", "import", str(bib))
    assert status == 1
    assert out.startswith("bib import: suggested placements for 'Fixture Token Pruning': ")
    assert "bib import: no --placement given, nothing was written" in err
    assert not (repo / "papers" / "fix2026.yaml").exists()


def test_suggestions_show_the_control_characters_of_an_unvalidated_title_instead_of_sending_them(
    repo, run_tools, tmp_path
):
    bib = tmp_path / "new.bib"
    bib.write_text(
        "@misc{fix2026,\n  title = {Token \x1b]0;pwned\x07 Pruning},\n  year = {2026}\n}\n", encoding="utf-8"
    )
    status, out, err = run_tools(repo, "bib", "import", str(bib))
    assert status == 1
    assert out.startswith("bib import: suggested placements for 'Token \\x1b]0;pwned\\x07 Pruning': "), out
    status, out, err = run_tools(repo, "new", "x2026", "--title", "A \x9b2J title", "--year", "2026")
    assert status == 1
    assert out.startswith("new: suggested placements for 'A \\x9b2J title': "), out


def test_feed_query_has_keywords_for_every_topic():
    keywords = yaml.safe_load((ROOT / "tools" / "triage_keywords.yaml").read_text(encoding="utf-8"))
    topics = {topic.id for topic in load_catalog(ROOT).taxonomy.topics}
    assert set(keywords) == topics and all(keywords[topic] for topic in topics)
    url = feed_url(ROOT)
    assert url.startswith("https://export.arxiv.org/api/query?search_query=")
    assert "continual+anomaly+detection" in url


def test_triage_workflow_is_pinned_and_least_privileged():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "triage.yml").read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"]
    assert workflow["permissions"] == {}
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    uses = [step["uses"] for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action) for action in uses), uses
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert (
        "python -m tools triage --feed-url" in commands and "python -m tools triage feed.xml --out triage" in commands
    )
