"""The computation-skipping benchmark on a tiny random-init ToyVLM v2 (2 LLM layers)."""

import json

import pytest
import torch

from reference_impls.bench import computation_skipping as bench
from reference_impls.bench import tokens
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.prefilling.op_skip import visual_flop_fraction


def test_settings_rows_flops_cache_and_command(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    checkpoint, out, cache = tmp_path / "toy", tmp_path / "out", tmp_path / "cache"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "short", "--checkpoint", str(checkpoint), "--n", "1", "--budgets", "0.5", "--seeds", "2", "3"]
    bench.main([*argv, "--out", str(out), "--cache", str(cache)])
    data = json.loads((out / "computation-skipping-toyvlm-v2-short.json").read_text())
    assert data["command"] == "python -m reference_impls.bench.computation_skipping " + " ".join(argv)
    rows = {row["method"]: row for row in data["rows"]}
    assert set(rows) == {"none (all tokens)", *bench.VARIANTS, "random@0 (equal FLOPs)", "withdraw@K"}
    config = tiny_toyvlm_v2().model.config.text_config
    skip_last = visual_flop_fraction(config, {1: ("query", "mlp")})  # budget 0.5 of 2 layers: layer 1 skips
    assert rows["op-skip"]["visual_flops"] == pytest.approx(skip_last, abs=1e-4)
    assert rows["random@0 (equal FLOPs)"]["visual_flops"] == rows["op-skip"]["visual_flops"]
    for name in bench.VARIANTS:  # no token dropped
        assert rows[name]["visual_tokens"] == rows["none (all tokens)"]["visual_tokens"] == 1024
    assert rows["random@0 (equal FLOPs)"]["visual_tokens"] == round(1024 * skip_last)
    assert rows["withdraw@K"]["visual_tokens"] == 1  # one visual token left from layer 1
    tests = json.loads((out / "computation-skipping-toyvlm-v2-short-tests.json").read_text())
    pairs = {(row["method"], row["versus"]) for row in tests["rows"]}
    others = set(rows) - {"op-skip", "none (all tokens)"}
    assert pairs == {("op-skip", name) for name in others} | {("none (all tokens)", name) for name in bench.VARIANTS}
    # A rerun reads the finished seeds back from the cache instead of evaluating them again.
    monkeypatch.setattr(tokens, "evaluate_seed", lambda *a, **k: pytest.fail("seed evaluated again"))
    bench.main([*argv, "--out", str(tmp_path / "again"), "--cache", str(cache)])
    again = json.loads((tmp_path / "again" / "computation-skipping-toyvlm-v2-short.json").read_text())
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in data["rows"]]
