"""The evaluation harness on a tiny random ToyVLM bundle."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.common.harness import cache_bytes, evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.scenes import SceneSpec
from reference_impls.common.toyvlm import ToyVLM, build_vocab, toyvlm_config
from reference_impls.registry import get_method

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle():
    vocab = build_vocab()
    config = toyvlm_config(vocab, hidden_size=32, num_layers=2, intermediate_size=64, vision_depth=1, vision_hidden=32)
    torch.manual_seed(0)
    return ToyVLM(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab, spec=SceneSpec(n_images=2, image_size=112))


def test_evaluate_without_method(bundle):
    result = evaluate(bundle, None, n=6, decode_samples=2, decode_tokens=3)
    assert result["n"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert result["visual_tokens"] == result["visual_tokens_full"] == 2 * 16
    config = bundle.model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads
    prompt = bundle.collate(bundle.samples(6, seed=1))["attention_mask"].sum(-1).float().mean()
    # plain DynamicCache: 2 (K, V) x layers x KV heads x head_dim x 4 bytes per prompt token
    assert result["kv_bytes"] == pytest.approx(
        float(prompt) * 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    )
    assert result["prefill_s"] > result["encode_s"] > 0 and result["decode_ms_per_token"] > 0


def test_evaluate_with_random_pruning(bundle):
    full = evaluate(bundle, None, n=4, decode_samples=1, decode_tokens=2)
    pruned = evaluate(bundle, RandomPruning(budget=0.25), n=4, decode_samples=1, decode_tokens=2)
    assert pruned["visual_tokens"] == 8 and pruned["visual_tokens_full"] == 32
    config = bundle.model.config.text_config
    per_token = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (config.hidden_size // config.num_attention_heads)
        * 4
    )
    assert full["kv_bytes"] - pruned["kv_bytes"] == pytest.approx(24 * per_token)  # 24 visual tokens dropped
    assert pruned["kv_bytes"] < full["kv_bytes"]


def test_random_pruning_is_registered():
    spec = get_method("random-pruning")
    assert spec.kind == "visual-token" and spec.family == "encoding-compression-attention-agnostic"
    assert spec.target is RandomPruning


def test_cache_bytes_protocol():
    class Reporting:
        def resident_bytes(self):
            return 123

        def offloaded_bytes(self):
            return 7

    assert cache_bytes(Reporting()) == (123, 7)
    assert cache_bytes(None) == (0, 0)
