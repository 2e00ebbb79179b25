"""The unlearning bench publishes each setting's range over seeds and checks unused seeds against it."""

from __future__ import annotations

import pytest

from reference_impls.common.results import Column, Results, save_results
from reference_impls.hallucination.bench import RANGE_METRICS, aggregate, check


def _rows(seeds, f1=lambda seed: 97.0 - seed % 3) -> list[dict]:
    # one setting (NPO as unlearned) whose clean F1 varies with the seed, the other metrics fixed
    metrics = {"chair_s": 10.0, "chair_i": 5.0, "pope_f1": 70.0, "pope_b_yes": 50.0, "p_hal": 1.0, "p_hal_push": 2.0}
    return [
        {"method": "npo", "condition": "unlearned", "relearn_steps": 0, "seed": seed, "hal_rate": 0.0, **metrics}
        | {"clean_f1": f1(seed)}
        for seed in seeds
    ]


def _published(tmp_path, seeds=range(10, 30)):
    table = aggregate(_rows(seeds))
    results = Results(
        "u", "U", "python -m x", [], [Column("method", "Method")], table, seeds={"tuning": [0], "reported": list(seeds)}
    )
    return save_results(results, tmp_path), table


def test_the_table_publishes_the_lowest_and_highest_seed_of_each_ranged_metric(tmp_path):
    _, table = _published(tmp_path)
    assert RANGE_METRICS == ("hal_rate", "clean_f1")
    assert (table[0]["clean_f1_low"], table[0]["clean_f1_high"]) == (95.0, 97.0)
    assert (table[0]["hal_rate_low"], table[0]["hal_rate_high"]) == (0.0, 0.0)
    assert "chair_s_low" not in table[0]


def test_unused_seeds_are_counted_inside_the_published_ranges(tmp_path, capsys):
    path, _ = _published(tmp_path)
    checks = check(path, _rows((40, 41, 42), f1=lambda seed: {40: 95.0, 41: 96.5, 42: 80.0}[seed]))
    assert [(c["seed"], c["metric"], c["inside"]) for c in checks if c["metric"] == "clean_f1"] == [
        (40, "clean_f1", True),
        (41, "clean_f1", True),
        (42, "clean_f1", False),
    ]
    out = capsys.readouterr().out
    assert "clean_f1: 2 of 3 values inside the range of the 20 reported seeds (expected at least 90.5%" in out
    assert "hal_rate: 3 of 3 values inside" in out


def test_a_reported_seed_or_an_unpublished_setting_is_refused(tmp_path):
    path, _ = _published(tmp_path)
    with pytest.raises(SystemExit, match=r"seeds \[12\] are among its reported seeds"):
        check(path, _rows((12, 40)))
    other = [{**row, "method": "sare"} for row in _rows((40,))]
    with pytest.raises(SystemExit, match=r"no published row for \{'method': 'sare'"):
        check(path, other)
