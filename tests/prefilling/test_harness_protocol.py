"""Every prefilling method runs through the shared harness on a tiny random ToyVLM bundle."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.common.harness import evaluate
from reference_impls.common.scenes import SceneSpec
from reference_impls.common.toyvlm import ToyVLM, build_vocab, toyvlm_config
from reference_impls.registry import all_methods

torch.set_num_threads(1)
PREFILL = [spec for spec in all_methods("visual-token") if spec.module.startswith("reference_impls.prefilling")]


@pytest.fixture(scope="module")
def bundle():
    vocab = build_vocab()
    config = toyvlm_config(vocab, hidden_size=32, num_layers=4, intermediate_size=64, vision_depth=1, vision_hidden=32)
    torch.manual_seed(0)
    return ToyVLM(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab, spec=SceneSpec(n_images=2, image_size=112))


@pytest.fixture(scope="module")
def full(bundle):
    return evaluate(bundle, None, n=2, decode_samples=1, decode_tokens=3)


@pytest.mark.parametrize("spec", PREFILL, ids=lambda spec: spec.name)
def test_stats_protocol_and_kv_bytes(bundle, full, spec):
    result = evaluate(bundle, spec.target(budget=0.25), n=2, decode_samples=1, decode_tokens=3)
    assert result["visual_tokens_full"] == 32
    if spec.family in ("sparse-attention", "computation-skipping"):  # keeps every token, computes less
        assert result["visual_tokens"] == 32 and result["kv_bytes"] == full["kv_bytes"]
    else:  # question first, two images: the pruned layers store fewer KV entries
        # SparseVLM recycles its pruned tokens into one extra cluster token here (upstream default).
        assert result["visual_tokens"] == 8 + (spec.name == "sparsevlm") and result["kv_bytes"] < full["kv_bytes"]
    assert result["decode_ms_per_token"] > 0
