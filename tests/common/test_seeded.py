"""Seeded evaluation: seed lists are disjoint and recorded, summaries and paired tests are over seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reference_impls.common.results import RESULTS_DIR, Column, Results, load_results
from reference_impls.common.seeded import (
    SeedCache,
    Seeds,
    inside_ranges,
    paired_tests,
    range_report,
    reword_tests,
    run_seeds,
    save_seeded,
    summarise,
)

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(seed: int) -> list[dict]:
    # method "a" is better than "b" by seed/10 on every seed; "c" has no accuracy ("" = undefined)
    return [
        {"method": "a", "family": "fa", "budget": 0.5, "acc": 50.0 + seed / 10},
        {"method": "b", "family": "", "budget": 0.5, "acc": 50.0},
        {"method": "c", "family": "fc", "budget": 0.5, "acc": ""},
    ]


def test_tuning_seeds_that_are_also_reported_are_refused():
    Seeds(reported=(10, 11), tuning=(1,))
    with pytest.raises(ValueError, match=r"\[11\]"):
        Seeds(reported=(10, 11), tuning=(1, 11))
    with pytest.raises(ValueError):
        Seeds(reported=())
    with pytest.raises(ValueError, match="repeat"):
        Seeds(reported=(10, 10))


def test_rows_are_tagged_and_summarised_over_seeds():
    rows, seconds = run_seeds(_evaluate, range(10, 16), log=None)
    assert len(seconds) == 6 and sorted({r["seed"] for r in rows}) == list(range(10, 16))
    summary = {r["method"]: r for r in summarise(rows, ("method", "budget"), ("acc",))}
    assert summary["a"]["acc"] == pytest.approx(51.25) and summary["a"]["acc_n"] == 6
    assert summary["a"]["acc_ci"] > 0 and summary["b"]["acc_ci"] == 0
    assert summary["c"]["acc"] is None and summary["c"]["acc_n"] == 0  # "" is undefined, not zero
    assert summary["a"]["seeds"] == 6 and "seed" not in summary["a"]


def test_paired_tests_pair_by_seed_within_groups_and_take_the_compared_family():
    rows, _ = run_seeds(_evaluate, range(10, 16), log=None)
    rows += [{**r, "budget": 0.25, "acc": 50.0} for r in rows if r["method"] != "c"]  # a tie at 0.25
    tests = {(t["budget"], t["versus"]): t for t in paired_tests(rows, "acc", "b", within=("budget",))}
    assert set(tests) == {(0.5, "a"), (0.25, "a")}  # "c" has no value to pair
    win = tests[(0.5, "a")]
    assert (win["wins"], win["losses"], win["sign_p"]) == (0, 6, pytest.approx(0.03125))
    assert win["family"] == "fa" and win["metric"] == "acc, budget 0.5"
    assert "a higher than b" in win["verdict"]
    assert tests[(0.25, "a")]["verdict"].startswith("no significant difference")


def test_saved_files_record_both_seed_lists(tmp_path):
    seeds = Seeds(reported=(10, 11, 12, 13, 14, 15), tuning=(1,))
    rows, _ = run_seeds(_evaluate, seeds.reported, log=None)
    results = Results("x", "X", "python -m x", [], [Column("method", "Method")], summarise(rows, ("method",), ("acc",)))
    paths = save_seeded(results, paired_tests(rows, "acc", "b"), seeds, "b", tmp_path)
    assert [p.name for p in paths] == ["x.json", "x-tests.json"]
    for path in paths:
        assert json.loads(path.read_text())["seeds"] == {"tuning": [1], "reported": [10, 11, 12, 13, 14, 15]}


def _seeded_modules() -> set[str]:
    """Benchmark modules that evaluate over seeds (they parse ``--seeds``)."""
    modules = set()
    for path in (ROOT / "reference_impls").rglob("*.py"):
        if "seeded.parse_seeded(" in path.read_text(encoding="utf-8") and path.name != "seeded.py":
            modules.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return modules


SEEDED = _seeded_modules()
COST_ONLY = {"block-sparse-cost", "attention-reuse-cost"}
"""Files a seeded command also writes that time synthetic inputs and draw no evaluation samples."""


def _seeded_results() -> list:
    files = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        command = re.match(r"python -m (\S+)", json.loads(path.read_text(encoding="utf-8"))["command"])
        if command is not None and command.group(1) in SEEDED and path.stem not in COST_ONLY:
            files.append(pytest.param(path, id=path.stem))
    return files


def test_the_toyvlm_benchmarks_are_seeded():
    assert {"reference_impls.bench.tokens", "reference_impls.bench.kv_quality"} <= SEEDED


@pytest.mark.parametrize("path", _seeded_results())
def test_committed_results_of_seeded_benchmarks_record_disjoint_seeds(path):
    results = load_results(path)
    assert results.seeds.get("reported"), f"{path.name}: no reported seeds recorded"
    assert "tuning" in results.seeds, f"{path.name}: tuning seeds not recorded"
    assert not set(results.seeds["tuning"]) & set(results.seeds["reported"]), path.name
    if not path.stem.endswith("-tests"):
        counts = {row.get("seeds") for row in results.rows}
        assert counts == {len(results.seeds["reported"])}, f"{path.name}: rows are not over the reported seeds"


def test_old_verdict_wording_in_a_tests_file_is_rephrased_and_nothing_else_changes(tmp_path):
    seeds = Seeds(reported=(10, 11, 12, 13, 14, 15), tuning=(1,))
    rows, _ = run_seeds(_evaluate, seeds.reported, log=None)
    rows = [{**r, "acc": 51.0 if (r["method"], r["seed"]) == ("a", 10) else 50.0} for r in rows if r["method"] != "c"]
    results = Results("x", "X", "python -m x", [], [Column("method", "Method")], summarise(rows, ("method",), ("acc",)))
    path = save_seeded(results, paired_tests(rows, "acc", "b"), seeds, "b", tmp_path)[1]
    current = path.read_text()
    assert "with 1 untied seed the sign test" in current
    assert not reword_tests(path) and path.read_text() == current  # already current: not rewritten
    data = json.loads(current)
    data["rows"][0]["verdict"] = data["rows"][0]["verdict"].replace("5 ties); with 1 untied seed", "5 ties")
    data["produced"] = "2026-01-01"
    path.write_text(json.dumps(data))
    assert reword_tests(path)
    again = json.loads(path.read_text())
    assert again["rows"] == json.loads(current)["rows"] and again["produced"] == "2026-01-01"


def test_a_tests_row_without_its_sign_test_fields_is_refused_with_file_and_row(tmp_path):
    path = tmp_path / "x-tests.json"
    path.write_text(json.dumps({"id": "x-tests", "title": "X", "command": "python -m x", "families": [], "rows": [{}]}))
    before = path.read_text()
    with pytest.raises(ValueError, match=r"x-tests.json: row 0 lacks the field 'sign_p'"):
        reword_tests(path)
    assert path.read_text() == before


def test_a_cached_seed_is_read_back_and_only_new_seeds_run(tmp_path):
    ran: list[int] = []

    def evaluate(seed: int) -> list[dict]:
        ran.append(seed)
        return _evaluate(seed)

    first, _ = run_seeds(evaluate, (10, 11), log=None, cache=SeedCache(tmp_path, {"n": 1}))
    both, seconds = run_seeds(evaluate, (10, 11, 12), log=None, cache=SeedCache(tmp_path, {"n": 1}))
    assert ran == [10, 11, 12] and len(seconds) == 3
    alone, _ = run_seeds(_evaluate, (10, 11, 12), log=None)
    assert both == alone and both[: len(first)] == first  # read back exactly as computed
    with pytest.raises(ValueError, match=r"seed-10.json: field 'key' is \{'n': 1\}, expected \{'n': 2\}"):
        run_seeds(evaluate, (10,), log=None, cache=SeedCache(tmp_path, {"n": 2}))
    (tmp_path / "seed-13.json").write_text("{")
    with pytest.raises(ValueError, match="seed-13.json: not a seed-cache file"):
        run_seeds(evaluate, (13,), log=None, cache=SeedCache(tmp_path, {"n": 1}))
    assert ran == [10, 11, 12] and not list(tmp_path.glob("*.tmp"))


def test_new_seeds_are_checked_against_the_published_range_bounds_included():
    rows, _ = run_seeds(_evaluate, range(10, 20), log=None)
    published = summarise(rows, ("method",), ("acc",), ranges=("acc",))
    a = next(r for r in published if r["method"] == "a")
    assert (a["acc_low"], a["acc_high"]) == (51.0, pytest.approx(51.9))
    fresh = [{"method": "a", "seed": 40, "acc": 51.0}, {"method": "a", "seed": 41, "acc": 52.0}]
    fresh += [{"method": "b", "seed": 40, "acc": 50.0}, {"method": "c", "seed": 40, "acc": ""}]
    checks = inside_ranges(published, fresh, ("method",), ("acc",))
    assert [(c["method"], c["seed"], c["inside"]) for c in checks] == [
        ("a", 40, True),
        ("a", 41, False),
        ("b", 40, True),
    ]
    report = range_report(checks, 10)
    assert (
        report[0] == "acc: 2 of 3 values inside the range of the 10 reported seeds (expected at least 81.8%, about 2)"
    )
    assert report[1].startswith("  outside: acc 52.0 not in [51.0, 51.9] (method a, seed 41)")
    with pytest.raises(ValueError, match="no published row for {'method': 'd'}"):
        inside_ranges(published, [{"method": "d", "acc": 1.0}], ("method",), ("acc",))
    with pytest.raises(ValueError, match="has no range for 'acc'"):
        inside_ranges(summarise(rows, ("method",), ("acc",)), fresh, ("method",), ("acc",))


def test_an_ablation_marks_its_tests_file_and_a_main_result_writes_no_flag(tmp_path):
    seeds = Seeds(reported=(10, 11, 12, 13, 14, 15))
    rows, _ = run_seeds(_evaluate, seeds.reported, log=None)
    for ablation in (True, False):
        results = Results(
            f"x{int(ablation)}",
            "X",
            "python -m x",
            [],
            [Column("method", "Method")],
            summarise(rows, ("method",), ("acc",)),
        )
        results.ablation = ablation
        for path in save_seeded(results, paired_tests(rows, "acc", "b"), seeds, "b", tmp_path):
            assert json.loads(path.read_text()).get("ablation", "absent") == (True if ablation else "absent")


def test_the_recorded_command_drops_the_scratch_output_folder(tmp_path):
    seeds = Seeds(reported=(10, 11, 12, 13, 14, 15))
    rows, _ = run_seeds(_evaluate, seeds.reported, log=None)
    for command in (
        f"python -m x --suite long --out {tmp_path} --n 3",
        f"python -m x --suite long --out={tmp_path} --n 3",
    ):
        results = Results("x", "X", command, [], [Column("method", "Method")], summarise(rows, ("method",), ("acc",)))
        for path in save_seeded(results, paired_tests(rows, "acc", "b"), seeds, "b", tmp_path):
            assert json.loads(path.read_text())["command"] == "python -m x --suite long --n 3"


def test_a_suite_name_becomes_a_valid_results_id_and_an_invalid_id_is_refused_before_writing(tmp_path):
    from reference_impls.common import results
    from reference_impls.common.results import results_id, save_results
    from tools.schema import RESULTS_ID_PATTERN

    assert results_id("tokens-toyvlm-v2", "multi_image") == "tokens-toyvlm-v2-multi-image"
    assert RESULTS_ID_PATTERN == results.RESULTS_ID_PATTERN  # the writer checks what the site's schema checks
    bad = Results("tokens-toyvlm-v2-multi_image", "X", "python -m x", [], [Column("method", "Method")], [])
    with pytest.raises(ValueError, match="multi_image"):
        save_results(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []
