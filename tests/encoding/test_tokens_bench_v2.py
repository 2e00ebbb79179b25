"""The visual-token benchmark on ToyVLM v2's chat suites, with a tiny random-init v2 bundle."""

import torch

from reference_impls.bench import tokens
from reference_impls.common import seeded
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2


def test_tokens_bench_runs_on_a_v2_suite(tmp_path):
    torch.set_num_threads(1)
    save_toyvlm_v2(tiny_toyvlm_v2(), tmp_path, {"parameters": 1})
    results, tests = tokens.run(
        ["random-pruning"],
        n=1,
        budgets=(0.25,),
        checkpoint=str(tmp_path),
        seeds=seeded.Seeds((1,), (3,)),
        log=lambda *_: None,
        suite="long",
    )
    assert results.id == "tokens-toyvlm-v2-long"
    full, pruned = results.rows
    assert full["visual_tokens_full"] == 1024 and pruned["visual_tokens"] == 256
    for row in results.rows:
        assert {"needle_accuracy", "aggregation_accuracy", "reply_tokens"} <= set(row)
    assert "Exact match" in [column.label for column in results.columns]
    assert "tokens-toyvlm-v2-long-tests" in results.notes and tests == []  # no method but the baseline
