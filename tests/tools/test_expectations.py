"""Expectations of paper entries: validation against the results files, evaluation of a comparison on
tiny results, and the agreement page (escaped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.catalog import Entry
from tools.expectations import applicable_cause, check_expectations, evaluate
from tools.results import load_all_results
from tools.site import markdown as md
from tools.site.agreement import agreement_md
from tools.yamlio import load_yaml

from .conftest import GOOD_ENTRY


def _results(**rows_by_id: list[dict]) -> list[dict]:
    files = []
    for name, rows in rows_by_id.items():
        keys = list(dict.fromkeys(key for row in rows for key in row if key != "family"))
        files.append(
            {"id": name.replace("_", "-"), "columns": [{"key": key, "label": key} for key in keys], "rows": rows}
        )
    return files


TINY = _results(
    tiny=[
        {"method": "full", "budget": 1.0, "accuracy": 100.0},
        {"method": "fast", "budget": 0.1, "accuracy": 90.0, "layout": "question-first"},
        {"method": "slow", "budget": 0.1, "accuracy": 80.0, "layout": "question-first"},
        {"method": "slow", "budget": 0.2, "accuracy": "", "layout": "question-first"},
    ],
    seeds=[
        {"method": "a", "score": 50.0, "score_ci": 2.0},
        {"method": "b", "score": 40.0, "score_ci": 3.0},
        {"method": "c", "score": 48.0, "score_ci": 3.0},
    ],
    seeds_tests=[
        {"metric": "score", "method": "a", "versus": "b", "mean_difference": 10.0, "sign_p": 0.031, "wins": 6},
        {"metric": "score", "method": "a", "versus": "c", "mean_difference": 2.0, "sign_p": 0.5, "wins": 4},
    ],
)
BY_ID = {data["id"]: data for data in TINY}


def _compare(**fields) -> dict:
    return {
        "area": "tokens",
        "claim": "c",
        "source": "abstract",
        "compare": {"results": "tiny", "column": "accuracy", **fields},
    }


@pytest.mark.parametrize(
    "fields, verdict, left, right",
    [
        ({"left": {"method": "fast"}, "relation": ">", "right": {"method": "slow", "budget": 0.1}}, "agrees", 90, 80),
        (
            {"left": {"method": "slow", "budget": 0.1}, "relation": ">", "right": {"method": "fast"}},
            "disagrees",
            80,
            90,
        ),
        ({"left": {"method": "fast"}, "relation": ">=", "right": {"method": "full"}, "offset": -10}, "agrees", 90, 90),
        (
            {"left": {"method": "fast"}, "relation": ">=", "right": {"method": "full"}, "offset": -5},
            "disagrees",
            90,
            95,
        ),
        (
            {"left": {"method": "fast"}, "relation": ">=", "right": {"method": "full"}, "factor": 0.93},
            "disagrees",
            90,
            93,
        ),
        ({"left": {"method": "slow", "budget": 0.1}, "relation": "<", "value": 85}, "agrees", 80, 85),
        ({"left": {"method": "fast"}, "relation": ">", "value": 90}, "disagrees", 90, 90),  # strict: a tie is not above
        ({"left": {"method": "slow", "budget": 0.2}, "relation": "<", "value": 85}, "not measured", None, 85),
    ],
)
def test_a_relation_is_evaluated_on_the_current_rows(fields, verdict, left, right):
    outcome = evaluate(_compare(**fields), BY_ID)
    assert (outcome.verdict, outcome.left, outcome.right) == (verdict, left, right)
    assert outcome.evidence == (
        "single run, no interval" if verdict != "not measured" else "the results have no number here"
    )


def test_budgets_match_as_numbers_and_an_expectation_without_compare_is_not_measured():
    outcome = evaluate(_compare(left={"method": "fast", "budget": 0.1 + 1e-12}, relation=">", value=0), BY_ID)
    assert outcome.verdict == "agrees"
    assert evaluate({"area": "tokens", "claim": "c", "source": "s"}, BY_ID).verdict == "not measured"


def test_a_paired_test_decides_significance_in_either_orientation():
    item = _compare(left={"method": "a"}, relation=">", right={"method": "b"})
    item["compare"].update(results="seeds", column="score")
    outcome = evaluate(item, BY_ID)
    assert (outcome.verdict, outcome.significant) == ("agrees", True)
    assert outcome.evidence == "sign test p = 0.031, 6 paired seeds"
    # b > a is the same test read the other way round: the disagreement is significant.
    item["compare"].update(left={"method": "b"}, right={"method": "a"})
    assert (evaluate(item, BY_ID).verdict, evaluate(item, BY_ID).significant) == ("disagrees", True)
    item["compare"].update(left={"method": "a"}, right={"method": "c"})
    outcome = evaluate(item, BY_ID)
    assert (outcome.verdict, outcome.significant, outcome.evidence) == (
        "agrees",
        False,
        "sign test p = 0.5, 4 paired seeds",
    )


def test_without_a_test_the_95_percent_intervals_are_compared():
    item = _compare(left={"method": "a"}, relation=">", value=44)
    item["compare"].update(results="seeds", column="score")
    outcome = evaluate(item, BY_ID)  # 50 +- 2 against the constant 44
    assert (outcome.verdict, outcome.significant, outcome.evidence) == ("agrees", True, "95% intervals do not overlap")
    item["compare"]["value"] = 49
    outcome = evaluate(item, BY_ID)
    assert (outcome.verdict, outcome.significant, outcome.evidence) == ("agrees", False, "95% intervals overlap")


SEEDS = [str(seed) for seed in range(10, 20)]
PER_SEED = {
    data["id"]: data
    for data in _results(
        paired=[
            # "low" is 2 points under "high" on every seed; their intervals overlap widely.
            {
                "method": "high",
                "accuracy": 72.0,
                "accuracy_ci": 5.0,
                "accuracy_by_seed": {s: 70.0 + i % 5 for i, s in enumerate(SEEDS)},
            },
            {
                "method": "low",
                "accuracy": 70.0,
                "accuracy_ci": 5.0,
                "accuracy_by_seed": {s: 68.0 + i % 5 for i, s in enumerate(SEEDS)},
            },
            {
                "method": "other-seeds",
                "accuracy": 70.0,
                "accuracy_ci": 5.0,
                "accuracy_by_seed": {s: 68.0 for s in SEEDS[:5]},
            },
        ]
    )
}


@pytest.mark.parametrize(
    "fields, verdict, significant, evidence",
    [
        ({"right": {"method": "low"}, "relation": ">"}, "agrees", True, "sign test p = 0.002, 10 paired seeds"),
        ({"right": {"method": "low"}, "relation": "<"}, "disagrees", True, "sign test p = 0.002, 10 paired seeds"),
        # the offset is applied seed by seed: high >= low + 3 fails on every seed
        (
            {"right": {"method": "low"}, "relation": ">=", "offset": 3},
            "disagrees",
            True,
            "sign test p = 0.002, 10 paired seeds",
        ),
        # a constant is a threshold every seed is tested against
        ({"value": 69.5, "relation": ">"}, "agrees", True, "sign test p = 0.002, 10 paired seeds"),
        ({"value": 72.0, "relation": ">"}, "disagrees", False, "sign test p = 1, 10 paired seeds"),
        # different seeds cannot be paired: the intervals decide
        ({"right": {"method": "other-seeds"}, "relation": ">"}, "agrees", False, "95% intervals overlap"),
    ],
)
def test_rows_that_keep_per_seed_values_are_paired_seed_by_seed(fields, verdict, significant, evidence):
    item = _compare(left={"method": "high"}, **fields)
    item["compare"]["results"] = "paired"
    outcome = evaluate(item, PER_SEED)
    assert (outcome.verdict, outcome.significant, outcome.evidence) == (verdict, significant, evidence)


def test_a_cause_applies_only_while_the_compared_row_matches_its_when():
    item = _compare(left={"method": "slow", "budget": 0.1}, relation=">", right={"method": "fast"})
    item["cause"] = {"text": "question first", "when": {"layout": "question-first"}}
    assert applicable_cause(item, BY_ID) == "question first"
    item["cause"]["when"] = {"layout": "chat"}
    assert applicable_cause(item, BY_ID) == ""


EXPECTING = (
    GOOD_ENTRY
    + """\
expectations:
- area: tokens
  claim: Fast is above slow.
  source: abstract
  compare:
    results: {results}
    column: {column}
    left:
      method: {left}
    relation: '>'
    right:
      method: slow
      budget: 0.1
"""
)


def _entry(tmp_path: Path, **fields) -> Entry:
    values = {"results": "tiny", "column": "accuracy", "left": "fast", **fields}
    path = tmp_path / "good2026entry.yaml"
    path.write_text(EXPECTING.format(**values), encoding="utf-8")
    return Entry(loaded=load_yaml(path), relpath="papers/good2026entry.yaml")


@pytest.mark.parametrize(
    "fields, expected",
    [
        (
            {"results": "tinny"},
            "papers/good2026entry.yaml:18: expectations[0].compare.results: unknown results id "
            "'tinny': no valid reference_impls/results/tinny.json; did you mean 'tiny'?",
        ),
        (
            {"column": "acuracy"},
            "papers/good2026entry.yaml:19: expectations[0].compare.column: 'acuracy' is not a "
            "column of 'tiny'; did you mean 'accuracy'?",
        ),
        (
            {"left": "fastv"},
            "papers/good2026entry.yaml:20: expectations[0].compare.left.method: 'fastv' is not a "
            "value of 'method' in 'tiny'; expected one of 'fast', 'full', 'slow'",
        ),
        (
            {"left": "slow"},
            "papers/good2026entry.yaml:20: expectations[0].compare.left: 2 rows of 'tiny' match "
            "{'method': 'slow'}; expected exactly one (add a field that tells them apart: accuracy, budget)",
        ),
    ],
)
def test_bad_expectations_name_file_line_field_and_what_was_expected(tmp_path, fields, expected):
    assert [str(problem) for problem in check_expectations([_entry(tmp_path, **fields)], TINY)] == [expected]


def test_a_cause_whose_when_names_a_field_no_row_has_is_an_error(tmp_path):
    """``when: {layuot: ...}`` would never match, so the recorded cause would silently never show; a
    value that no longer matches is allowed (a re-run benchmark retires the cause)."""
    path = tmp_path / "good2026entry.yaml"
    text = EXPECTING.format(results="tiny", column="accuracy", left="fast")
    path.write_text(text + "  cause:\n    when:\n      layuot: question-first\n      method: gone\n    text: x\n")
    entry = Entry(loaded=load_yaml(path), relpath="papers/good2026entry.yaml")
    assert [str(problem) for problem in check_expectations([entry], TINY)] == [
        "papers/good2026entry.yaml:28: expectations[0].cause.when.layuot: no row of 'tiny' has the field 'layuot'; "
        "did you mean 'layout'?"
    ]


def test_a_good_expectation_has_no_problem(tmp_path):
    assert check_expectations([_entry(tmp_path)], TINY) == []


def test_validate_refuses_an_expectation_on_a_missing_row(repo, run_tools):
    text = EXPECTING.format(results="tokens-toyvlm", column="accuracy", left="fastv").replace(
        "method: slow", "method: x"
    )
    (repo / "papers" / "good2026entry.yaml").write_text(text, encoding="utf-8")
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/good2026entry.yaml:23: expectations[0].compare.right.method: 'x' is not a value of 'method'" in err


def test_the_page_escapes_every_string_and_shows_the_cause_only_for_a_disagreement(tmp_path):
    hostile = "<script>alert(1)</script> | *x*"
    agree = _entry(tmp_path)
    agree.data["expectations"][0].update(claim=hostile, source=hostile)
    (tmp_path / "b").mkdir()
    disagree = _entry(tmp_path / "b", left="full")
    disagree.data["key"] = "other2026entry"
    disagree.data["expectations"][0]["compare"].update(relation="<")
    disagree.data["expectations"][0]["cause"] = {"text": hostile}
    page = agreement_md([agree, disagree], TINY)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "\\| \\*x\\*" in page  # no new table cell, no emphasis
    assert "2 expectations: 1 agree, 1 disagree, 0 not measured" in page
    rows = [line for line in page.splitlines() if line.startswith("| tokens")]
    assert len(rows) == 2 and rows[0].count(" | ") == rows[1].count(" | ") == 7
    agreeing = next(row for row in rows if "**agrees**" in row)
    disagreeing = next(row for row in rows if "**disagrees**" in row)
    assert agreeing.endswith("|  |") and "&lt;script&gt;" in disagreeing.rsplit(" | ", 1)[1]
    assert "(../papers/good2026entry.md)" in agreeing


def test_non_overlapping_intervals_make_a_disagreement_significant_too():
    item = _compare(left={"method": "a"}, relation=">", value=55)
    item["compare"].update(results="seeds", column="score")
    outcome = evaluate(item, BY_ID)  # 50 +- 2 lies wholly below 55
    assert (outcome.verdict, outcome.significant, outcome.evidence) == (
        "disagrees",
        True,
        "95% intervals do not overlap",
    )


GROUPED = _results(
    grouped=[
        {"method": "x", "budget": 0.1, "acc": 60.0},
        {"method": "y", "budget": 0.1, "acc": 50.0},
        {"method": "x", "budget": 0.2, "acc": 70.0},
        {"method": "y", "budget": 0.2, "acc": 75.0},
    ],
    grouped_tests=[
        {"metric": "acc, budget 0.1", "budget": 0.1, "method": "y", "versus": "x", "mean_difference": -10.0}
        | {"sign_p": 0.002, "wins": 0, "losses": 10, "ties": 0, "family": "f", "verdict": "v"},
        {"metric": "acc, budget 0.2", "budget": 0.2, "method": "y", "versus": "x", "mean_difference": 5.0}
        | {"sign_p": 0.3, "wins": 6, "losses": 4, "ties": 0, "family": "f", "verdict": "v"},
        {"metric": "accuracy_other, budget 0.1", "budget": 0.1, "method": "x", "versus": "y", "mean_difference": 9.0}
        | {"sign_p": 0.9, "wins": 1, "losses": 1, "ties": 8},
    ],
)


@pytest.mark.parametrize(
    "budget, verdict, significant, evidence",
    [
        (0.1, "agrees", True, "sign test p = 0.002, 10 paired seeds"),
        (0.2, "disagrees", False, "sign test p = 0.3, 10 paired seeds"),
    ],
)
def test_a_paired_test_named_after_its_group_is_found_by_the_group_fields(budget, verdict, significant, evidence):
    item = _compare(left={"method": "x", "budget": budget}, relation=">", right={"method": "y", "budget": budget})
    item["compare"].update(results="grouped", column="acc")
    outcome = evaluate(item, {data["id"]: data for data in GROUPED})
    assert (outcome.verdict, outcome.significant, outcome.evidence) == (verdict, significant, evidence)


def _entry_with(tmp_path: Path, extra: str, **fields) -> Entry:
    """An expectation with ``extra`` lines after its source (line 17 onwards)."""
    entry = _entry(tmp_path, **fields)
    text = entry.loaded.path.read_text(encoding="utf-8").replace("  source: abstract\n", "  source: abstract\n" + extra)
    entry.loaded.path.write_text(text, encoding="utf-8")
    return Entry(loaded=load_yaml(entry.loaded.path), relpath=entry.relpath)


def test_the_url_of_a_claim_must_be_a_page_the_entry_cites(tmp_path):
    cited = _entry_with(tmp_path, "  url: https://arxiv.org/abs/2611.00001\n")
    assert check_expectations([cited], TINY) == []
    uncited = _entry_with(tmp_path, "  url: https://example.org/elsewhere\n")
    assert [str(problem) for problem in check_expectations([uncited], TINY)] == [
        "papers/good2026entry.yaml:17: expectations[0].url: 'https://example.org/elsewhere' is not among the "
        "entry's url, code and sources; expected one of them (https://arxiv.org/abs/2611.00001), or add the page to "
        "sources first"
    ]


def test_a_reason_for_not_measuring_is_shown_and_never_given_with_a_comparison(tmp_path):
    reason = "no benchmark of ours times LOOK-M"
    item = {"area": "kv-cache", "claim": "c", "source": "s", "not_measured": reason}
    assert (evaluate(item, BY_ID).verdict, evaluate(item, BY_ID).evidence) == ("not measured", reason)
    both = _entry_with(tmp_path, f"  not_measured: {reason}\n")
    assert [str(problem) for problem in check_expectations([both], TINY)] == [
        "papers/good2026entry.yaml:17: expectations[0].not_measured: given together with compare; expected one "
        "of them: compare when a results file checks the claim, not_measured (the reason) when none does"
    ]


def test_the_page_links_where_the_claim_was_read_and_escapes_its_host(tmp_path):
    entry = _entry(tmp_path)
    entry.data["expectations"][0]["url"] = "https://arxiv.org/abs/2611.00001"
    page = agreement_md([entry], TINY)
    assert "| abstract ([arxiv\\.org](https://arxiv.org/abs/2611.00001)) |" in page


def test_a_url_python_cannot_parse_is_refused_and_never_stops_the_page(tmp_path, repo, run_tools):
    """urlsplit refuses "https://[x" (ValueError: Invalid IPv6 URL): validate names it, and the page
    (built from whatever it is given) and free text with such a URL still render."""
    entry = _entry(tmp_path)
    entry.data["expectations"][0]["url"] = "https://[x/y"
    assert "| abstract ([\\[x](https://[x/y)) |" in agreement_md([entry], TINY)
    assert md.linked_text("see https://[x/y") == "see [\\[x](https://[x/y)"
    text = GOOD_ENTRY.replace("url: https://arxiv.org/abs/2611.00001", "url: https://[x/y")
    (repo / "papers" / "good2026entry.yaml").write_text(text, encoding="utf-8")
    status, out, err = run_tools(repo, "validate")
    assert status == 1 and "papers/good2026entry.yaml:9: url: 'https://[x/y' does not match the expected format" in err


def test_every_expectation_in_the_catalog_checks_and_evaluates_on_the_committed_results():
    root = Path(__file__).resolve().parents[2]
    results = load_all_results(root)
    by_id = {data["id"]: data for data in results}
    entries = [
        Entry(loaded=load_yaml(path), relpath=f"papers/{path.name}")
        for path in sorted((root / "papers").glob("*.yaml"))
        if "\nexpectations:\n" in path.read_text(encoding="utf-8")
    ]
    assert len(entries) >= 16
    assert check_expectations(entries, results) == []
    for entry in entries:
        assert entry.data["key"] == entry.loaded.path.stem  # the row's paper is this entry
        for item in entry.data["expectations"]:
            assert evaluate(item, by_id).verdict in ("agrees", "disagrees", "not measured")


def test_a_family_page_links_the_claims_of_its_papers_to_the_agreement_page(repo):
    from tools.catalog import load_catalog
    from tools.site.data import SiteData
    from tools.site.pages import node_md

    site = SiteData(load_catalog(repo))
    node = site.taxonomy.by_id["kv-head-level"]  # HybridKV's family; HybridKV is a seed entry
    claims = sum(len(entry.data.get("expectations") or []) for entry in site.papers_under(node))
    assert claims >= 2
    page = node_md(node, site, {})
    sentence = f"{claims} claims of the papers placed here are set against our benchmarks on [What papers report"
    assert sentence in page and "/results/agreement.md)" in page.split(sentence, 1)[1].split("\n", 1)[0]
    assert "are set against our benchmarks" not in node_md(site.taxonomy.by_id["kv-token-level"], site, {})


def test_a_comparison_awaiting_its_results_is_not_measured_until_they_exist(tmp_path):
    pending = _entry_with(tmp_path, "", results="kv-quality-toyvlm-v2-long")
    text = pending.loaded.path.read_text(encoding="utf-8").replace(
        "    column: accuracy\n", "    column: accuracy\n    awaits: the ToyVLM v2 re-run\n"
    )
    pending.loaded.path.write_text(text, encoding="utf-8")
    pending = Entry(loaded=load_yaml(pending.loaded.path), relpath=pending.relpath)
    assert check_expectations([pending], TINY) == []  # an unknown id is accepted while awaited
    outcome = evaluate(pending.data["expectations"][0], BY_ID)
    assert (outcome.verdict, outcome.evidence) == ("not measured", "not written yet, awaits the ToyVLM v2 re-run")
    # Once the file exists the comparison is checked and evaluated; awaits is then a warning to remove it.
    pending.data["expectations"][0]["compare"]["results"] = "tiny"
    assert [str(problem) for problem in check_expectations([pending], TINY)] == [
        "papers/good2026entry.yaml:20: warning: expectations[0].compare.awaits: 'tiny' exists now and is compared; "
        "expected no awaits (remove it)"
    ]
    assert evaluate(pending.data["expectations"][0], BY_ID).verdict == "agrees"


def test_the_page_names_the_results_file_a_row_awaits_and_escapes_what_it_awaits(tmp_path):
    entry = _entry(tmp_path)
    entry.data["expectations"][0]["compare"].update(results="tiny-v2-long", awaits="<b>v2</b> | run")
    page = agreement_md([entry], TINY)
    row = next(line for line in page.splitlines() if line.startswith("| tokens"))
    assert "`tiny-v2-long`: not written yet, awaits &lt;b&gt;v2&lt;/b&gt; \\| run | **not measured** |" in row
    assert "1 expectation: 0 agree, 0 disagree, 1 not measured" in page
