"""The visual-token benchmark on ToyVLM v2's chat suites, with a tiny random-init v2 bundle."""

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.bench import tokens
from reference_impls.common import seeded
from reference_impls.common.toyvlm_v2 import ToyVLMv2, build_vocab_v2, save_toyvlm_v2, toyvlm_v2_config


def test_tokens_bench_runs_on_a_v2_suite(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = build_vocab_v2()
    config = toyvlm_v2_config(
        vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vision_hidden=32, vision_depth=1
    )
    save_toyvlm_v2(ToyVLMv2(Qwen2_5_VLForConditionalGeneration(config), vocab), tmp_path, {"parameters": 1})
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
