"""The continual-AD bench caches seeds, publishes each method's range over seeds and checks fresh seeds against it.

The per-seed runner is replaced by one returning synthetic rows, so the bench's seed protocol runs in seconds.
"""

from __future__ import annotations

import json

import pytest

from reference_impls.continual_ad import bench


def _fake_runner(calls: list[int], image=lambda seed: 90.0 + seed % 5):
    def runner(args, ablations, log):
        def one_seed(seed: int) -> list[dict]:
            calls.append(seed)
            rows = []
            for name, offset in (("hf-olb", 0.0), ("replay", -2.0)):
                value = image(seed) + offset
                rows.append(
                    {
                        "method": name,
                        "image_a_auroc": value,
                        "image_fm": 1.0,
                        "pixel_a_auroc": value + 1,
                        "pixel_fm": 0.5,
                        "aupro": 80.0,
                        "routing_accuracy": 1.0 if name == "hf-olb" else None,
                        "params_per_task": [100, 100],
                        "image_curve": [value, value],
                        "pixel_curve": [value + 1, value + 1],
                        "variants": {"R0 sum_all": {"image_a_auroc": value - 1, "pixel_a_auroc": value}}
                        if name == "hf-olb"
                        else {},
                        "seconds": 1.0,
                    }
                )
            return rows

        return one_seed

    return runner


def _main(monkeypatch, tmp_path, seeds, *extra, calls=None, image=None):
    calls = [] if calls is None else calls
    runner = _fake_runner(calls) if image is None else _fake_runner(calls, image)
    monkeypatch.setattr(bench, "_seed_runner", runner)
    argv = ["--seeds", *map(str, seeds), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *extra]
    bench.main(argv)
    return calls


def _published(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "continual-ad-procad.json").read_text(encoding="utf-8"))


def test_adding_seeds_runs_only_the_new_ones(monkeypatch, tmp_path):
    assert _main(monkeypatch, tmp_path, (10, 11)) == [10, 11]
    assert _main(monkeypatch, tmp_path, (10, 11, 12)) == [12]
    results = _published(tmp_path)
    assert results["seeds"]["reported"] == [10, 11, 12]
    hf = next(r for r in results["rows"] if r["method"] == "hf-olb")
    assert hf["seeds"] == 3 and hf["image_a_auroc"] == pytest.approx(91.0)  # seeds 10-12: 90, 91, 92


def test_a_cache_written_under_other_settings_is_refused(monkeypatch, tmp_path):
    _main(monkeypatch, tmp_path, (10,))
    with pytest.raises(SystemExit, match="written for another configuration"):
        _main(monkeypatch, tmp_path, (10,), "--steps", "5")


def test_the_table_publishes_each_methods_lowest_and_highest_seed(monkeypatch, tmp_path):
    _main(monkeypatch, tmp_path, range(10, 16))  # image A-AUROC 90, 91, 92, 93, 94, 90
    results = _published(tmp_path)
    rows = {r["method"]: r for r in results["rows"]}
    assert (rows["hf-olb"]["image_a_auroc_low"], rows["hf-olb"]["image_a_auroc_high"]) == (90.0, 94.0)
    assert (rows["replay"]["pixel_a_auroc_low"], rows["replay"]["pixel_a_auroc_high"]) == (89.0, 93.0)
    assert rows["hf-olb [R0 sum_all]"]["image_a_auroc_low"] == 89.0
    assert rows["hf-olb [R0 sum_all]"]["image_fm_low"] is None  # undefined for a routing variant
    keys = [c["key"] for c in results["columns"]]
    for metric in bench.RANGE_METRICS:
        at = keys.index(f"{metric}_ci")
        assert keys[at + 1 : at + 3] == [f"{metric}_low", f"{metric}_high"]
    assert "at least 71.4%" in results["notes"]


def test_fresh_seeds_are_counted_inside_the_published_ranges(monkeypatch, tmp_path, capsys):
    _main(monkeypatch, tmp_path, range(10, 16))
    capsys.readouterr()
    published = str(tmp_path / "out" / "continual-ad-procad.json")
    fresh = {30: 94.0, 31: 97.0}  # hf-olb image: 94 inside [90, 94], 97 outside; replay 92 inside, 95 outside
    calls = _main(monkeypatch, tmp_path, (30, 31), "--check", published, image=fresh.get)
    assert calls == [30, 31]
    out = capsys.readouterr().out
    assert "image_a_auroc: 3 of 6 values inside the range of the 6 reported seeds (expected at least 71.4%" in out
    assert "image_fm: 4 of 4 values inside" in out
    assert "outside: image_a_auroc 97.0 not in [90.0, 94.0] (method hf-olb, seed 31)" in out
    with pytest.raises(SystemExit, match=r"seeds \[15\] are among its reported seeds"):
        _main(monkeypatch, tmp_path, (15, 30), "--check", published)
