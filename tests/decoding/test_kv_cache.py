"""Generic properties of every ``kind="kv-cache"`` method on tiny random Qwen2.5-VL models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reference_impls import registry
from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding.cache import ATTN_NAME, greedy_decode, resolve_budget
from reference_impls.decoding.snapkv import SnapKV

METHODS = registry.all_methods(kind="kv-cache")
NAMES = [spec.name for spec in METHODS]
# Small windows/groups so that budgets, windows and groups all matter on ~60-token prompts.
SMALL = {"window": 6, "chunk_size": 4, "group_size": 8, "residual_length": 8, "n_sink": 2}


def small(spec, budget):
    fields = {f.name for f in dataclasses.fields(spec.target)}
    return spec.target(budget=budget, **{k: v for k, v in SMALL.items() if k in fields})


@pytest.fixture(scope="module")
def reference(model, inputs):
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits)


def test_registry_lists_the_families():
    assert {"snapkv", "pyramidkv", "adakv", "hybridkv", "streamingllm", "h2o", "lookm", "kivi"} <= set(NAMES)
    families = {spec.name: spec.family for spec in METHODS}
    assert families["hybridkv"] == families["adakv"] == "kv-head-level"
    assert families["pyramidkv"] == "kv-layer-level" and families["kivi"] == "kv-bit-level"


@pytest.mark.parametrize("name", NAMES)
def test_full_budget_equals_uncompressed(name, model, inputs, reference):
    method = small(registry.get_method(name), 1.0)
    with method(model):
        out = model.generate(
            **inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    assert torch.equal(out.sequences, reference[0])
    torch.testing.assert_close(torch.stack(out.logits), reference[1], atol=1e-5, rtol=0)
    assert model.config.text_config._attn_implementation == "sdpa"  # restored on exit


@pytest.mark.parametrize("name", NAMES)
def test_generate_compresses_and_keeps_logical_length(name, model, inputs):
    method = small(registry.get_method(name), 0.25)
    n = inputs["input_ids"].shape[1]
    with method(model):
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    cache = method.cache
    assert out.shape[1] == n + 6
    assert all(layer.get_seq_length() == n + 5 for layer in cache.layers)  # last token is not fed back
    full = cache.byte_report()["full_bytes"]
    assert 0 < cache.resident_bytes() < 0.75 * full, (cache.resident_bytes(), full)


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "adakv", "hybridkv", "lookm", "h2o", "streamingllm", "kivi"])
def test_explicit_positions_decoder_equals_generate(name, model, inputs):
    method = small(registry.get_method(name), 0.3)
    with method(model):
        ref = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] :]
        explicit, logits_e = greedy_decode(model, inputs, method.make_cache(model, inputs["input_ids"]), 6, True)
        implicit, logits_i = greedy_decode(model, inputs, method.make_cache(model, inputs["input_ids"]), 6, False)
    assert torch.equal(explicit, ref)
    assert torch.equal(implicit, ref)
    torch.testing.assert_close(logits_e, logits_i, atol=1e-5, rtol=0)


def test_physical_length_would_shift_positions(model, inputs):
    """Negative control: positions derived from the physical length change the logits."""
    method = small(registry.get_method("snapkv"), 0.3)
    with method(model):
        cache = method.make_cache(model, inputs["input_ids"])
        _, good = greedy_decode(model, inputs, cache, 3, False)
        cache = method.make_cache(model, inputs["input_ids"])
        for layer in cache.layers:  # what a plain DynamicLayer would report
            layer.get_seq_length = layer.physical_length
        _, bad = greedy_decode(model, inputs, cache, 3, False)
    assert (good[1:] - bad[1:]).abs().max() > 1e-4


def test_snapkv_keeps_top_scored_entries(model, inputs):
    """Every query head keeps its own top entries (the reference code repeats K/V before compressing)."""
    from reference_impls.decoding.kv_scores import observation_scores

    method = SnapKV(budget=12, window=4, pool_kernel=3)
    captured = {}
    cls = type(method.make_layer(0, None))
    old = cls.after_prefill

    def spy(layer, module, query, scaling):
        captured[layer.layer_idx] = (query.clone(), layer.keys.clone(), scaling)
        old(layer, module, query, scaling)

    cls.after_prefill = spy
    try:
        with method(model):
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        cls.after_prefill = old
    for layer in method.cache.layers:
        query, keys, scaling = captured[layer.layer_idx]
        scores = observation_scores(query, keys, 4, scaling, 3, per_query_head=True)
        assert len(layer.head_lengths()) == query.shape[1] == scores.shape[0]
        for h in range(query.shape[1]):
            kept = set(layer.head_positions(h).tolist())
            assert len(kept) == 12
            threshold = min(scores[h, p].item() for p in kept)
            dropped = [p for p in range(keys.shape[2]) if p not in kept]
            assert all(scores[h, p].item() <= threshold for p in dropped)
            assert set(range(keys.shape[2] - 4, keys.shape[2])) <= kept  # window inside the budget


def test_adakv_heads_really_differ_in_memory(model, inputs):
    method = small(registry.get_method("adakv"), 0.3)
    with method(model):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    n = inputs["input_ids"].shape[1]
    b = resolve_budget(0.3, n)
    differ = False
    for layer in method.cache.layers:
        lengths = layer.head_lengths()
        # Ada-KV's rounding of 0.8 c_h + floor moves the layer total by at most half an entry per head.
        assert abs(sum(lengths) - len(lengths) * (b + 1)) <= len(lengths) / 2  # (+1 generated entry per head)
        differ |= len(set(lengths)) > 1
        assert [t.shape[0] for t in layer.head_keys] == lengths  # storage, not a mask
        d = layer.head_keys[0].shape[1]
        assert sum(t.nelement() for t in layer.head_keys) == sum(lengths) * d
    assert differ
    d = method.cache.layers[0].head_keys[0].shape[1]
    hand = sum(sum(layer.head_lengths()) * (2 * d * 4 + 4) for layer in method.cache.layers)
    assert method.cache.resident_bytes() == hand


def test_uniform_bytes_hand_count(model, inputs):
    method = small(registry.get_method("snapkv"), 16)
    with method(model):
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
    cfg = model.config.text_config
    d = cfg.hidden_size // cfg.num_attention_heads
    # The default repeats K/V to the query heads (as the reference code): one copy per query head.
    entries = cfg.num_hidden_layers * cfg.num_attention_heads * (16 + 3)
    assert method.cache.resident_bytes() == entries * (2 * d * 4 + 4)  # K + V float32, int32 position
    assert method.cache.offloaded_bytes() == 0
    logical = inputs["input_ids"].shape[1] + 3
    full = cfg.num_hidden_layers * cfg.num_key_value_heads * logical * 2 * d * 4
    assert method.cache.byte_report()["full_bytes"] == full  # the full cache holds KV heads only
    shared = dataclasses.replace(method, gqa="mean")
    with shared(model):
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
    entries = cfg.num_hidden_layers * cfg.num_key_value_heads * (16 + 3)
    assert shared.cache.resident_bytes() == entries * (2 * d * 4 + 4)
    assert shared.cache.byte_report()["full_bytes"] == full


def test_refuses_batches_and_eager(model, inputs):
    method = small(registry.get_method("snapkv"), 0.3)
    batch = tiny_inputs(model, grids=((4, 4),), batch_size=2)
    with method(model), pytest.raises(ValueError, match="batch size 1"):
        model.generate(**batch, max_new_tokens=2, do_sample=False)
    eager = tiny_qwen25vl(seed=0, num_layers=2, attn_implementation="eager")
    with pytest.raises(ValueError, match=ATTN_NAME):
        method.make_cache(eager)


def test_resolve_budget():
    assert resolve_budget(0.1, 100) == 10 and resolve_budget(7, 100) == 7 and resolve_budget(500, 100) == 100
    assert resolve_budget(0.01, 100, minimum=5) == 5
    for bad in (0.0, 1.5, 0, True):
        with pytest.raises((ValueError, TypeError)):
            resolve_budget(bad, 100)


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "adakv", "hybridkv", "lookm"])
def test_multi_token_step_matches_single_steps(name, model, inputs):
    """Several tokens in one forward (speculative verification) equal the same tokens one by one.

    Not KIVI: it quantises a group as soon as it fills, so one-by-one steps see quantised keys
    that a block of tokens sees in full precision. Not H2O/StreamingLLM: they evict per step.
    """
    method = small(registry.get_method(name), 0.4)
    extra = torch.tensor([[11, 12, 13]])
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    last = positions[..., -1:]
    with method(model), torch.no_grad():
        one = method.make_cache(model, inputs["input_ids"])
        model(**inputs, cache=one, use_cache=True, position_ids=positions)
        singles = [
            model(input_ids=extra[:, i : i + 1], cache=one, use_cache=True, position_ids=last + 1 + i).logits[0, -1]
            for i in range(3)
        ]
        many = method.make_cache(model, inputs["input_ids"])
        model(**inputs, cache=many, use_cache=True, position_ids=positions)
        block = model(input_ids=extra, cache=many, use_cache=True, position_ids=last + torch.arange(1, 4)).logits[0]
    torch.testing.assert_close(block, torch.stack(singles), atol=1e-5, rtol=0)
    assert many.get_seq_length() == one.get_seq_length() == inputs["input_ids"].shape[1] + 3


def test_direct_forward_gets_the_compressed_cache(model, inputs):
    method = small(registry.get_method("snapkv"), 0.3)
    with method(model), torch.no_grad():
        out = model(**inputs, use_cache=True)
    assert out.cache is method.cache and method.cache.resident_bytes() < method.cache.byte_report()["full_bytes"]
    assert "forward" not in vars(model) and "generate" not in vars(model)


@pytest.mark.parametrize("name", ["snapkv", "adakv", "hybridkv"])
def test_crop_rolls_back_generated_tokens(name, model, inputs):
    """Speculative decoding rolls rejected tokens back with ``cache.crop(-n)``."""
    method = small(registry.get_method(name), 0.4)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    last = positions[..., -1:]
    with method(model), torch.no_grad():
        cache = method.make_cache(model, inputs["input_ids"])
        model(**inputs, cache=cache, use_cache=True, position_ids=positions)
        before = [layer.head_lengths() for layer in cache.layers]
        model(input_ids=torch.tensor([[11, 12]]), cache=cache, use_cache=True, position_ids=last + torch.arange(1, 3))
        cache.crop(-2)
        assert [layer.head_lengths() for layer in cache.layers] == before
        assert cache.get_seq_length() == inputs["input_ids"].shape[1]
        again = model(input_ids=torch.tensor([[13]]), cache=cache, use_cache=True, position_ids=last + 1).logits
        fresh = method.make_cache(model, inputs["input_ids"])
        model(**inputs, cache=fresh, use_cache=True, position_ids=positions)
        direct = model(input_ids=torch.tensor([[13]]), cache=fresh, use_cache=True, position_ids=last + 1).logits
    torch.testing.assert_close(again, direct, atol=1e-6, rtol=0)


def test_missing_token_types_fail_loudly(model, inputs):
    method = small(registry.get_method("snapkv"), 0.3)
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with method(model), pytest.raises(ValueError, match="mm_token_type_ids"):
        model.generate(**without, max_new_tokens=2, do_sample=False)
