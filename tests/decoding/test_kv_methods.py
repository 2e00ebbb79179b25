"""Method-specific properties: StreamingLLM, H2O, LOOK-M, PyramidKV and KIVI."""

from __future__ import annotations

import pytest
import torch

from reference_impls.decoding.cache import resolve_budget
from reference_impls.decoding.h2o import H2O, heavy_recent_index
from reference_impls.decoding.kivi import KIVI, dequantize, pack_codes, quantize, unpack_codes
from reference_impls.decoding.lookm import LookM
from reference_impls.decoding.pyramidkv import PyramidKV, layer_budgets
from reference_impls.decoding.streamingllm import StreamingLLM


def _generate(method, model, inputs, steps=6, **kwargs):
    with method(model):
        return model.generate(**inputs, max_new_tokens=steps, do_sample=False, **kwargs)


def test_streamingllm_keeps_sinks_and_recent(model, inputs):
    method = StreamingLLM(budget=12, n_sink=3)
    _generate(method, model, inputs)
    logical = method.cache.layers[0].get_seq_length()
    expected = list(range(3)) + list(range(logical - 9, logical))
    for layer in method.cache.layers:
        for h in range(2):
            assert layer.head_positions(h).tolist() == expected


def test_h2o_fixed_size_and_heavy_hitters(model, inputs):
    method = H2O(budget=10)
    _generate(method, model, inputs)
    for layer in method.cache.layers:
        assert layer.head_lengths() == [10, 10] and layer.scores.shape == (2, 10)
        assert layer.head_positions(0)[-5:].tolist() == list(range(layer.logical_length - 5, layer.logical_length))
    scores = torch.tensor([[5.0, 0.0, 4.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 2.0, 9.0, 9.0]])
    assert [sorted(row) for row in heavy_recent_index(scores, 4, 2).tolist()] == [[0, 2, 4, 5], [1, 3, 4, 5]]


def test_lookm_fills_text_first_and_merges(model, inputs):
    n = inputs["input_ids"].shape[1]
    visual = inputs["mm_token_type_ids"][0].bool()
    n_text = int((~visual).sum())
    budget = n_text + 5
    merged, plain = LookM(budget=budget, window=4), LookM(budget=budget, window=4, merge=False)
    _generate(merged, model, inputs, steps=1)
    _generate(plain, model, inputs, steps=1)
    text = set((~visual).nonzero().view(-1).tolist())
    for layer in merged.cache.layers:
        for h in range(2):
            kept = set(layer.head_positions(h).tolist()) - {n}
            assert text <= kept and len(kept) == budget  # all text kept, visual fills the rest
    differs = any(not torch.allclose(a.keys, b.keys) for a, b in zip(merged.cache.layers, plain.cache.layers))
    assert differs  # evicted visual entries changed some kept keys
    assert resolve_budget(budget, n) == budget


def test_pyramidkv_layer_lengths_fall_with_depth(model, inputs):
    method = PyramidKV(budget=16, window=4)
    _generate(method, model, inputs, steps=2)
    lengths = [layer.head_lengths()[0] - 1 for layer in method.cache.layers]  # minus the generated entry
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    assert sum(lengths) == 3 * 16 == sum(layer_budgets(method, 3, inputs["input_ids"].shape[1]))


@pytest.mark.parametrize("bits", [2, 4])
def test_kivi_quantisation_round_trip(bits):
    codes = torch.randint(0, 2**bits, (3, 5, 16))
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits).long(), codes)
    x = torch.randn(1, 2, 8, 16)
    packed, scale, zero = quantize(x, bits, dim=2)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == 16 * bits // 8
    assert bool(((dequantize(packed, scale, zero, bits) - x).abs() <= scale / 2 + 1e-6).all())


def test_kivi_bytes_and_residual(model, inputs):
    method = KIVI(bits=2, group_size=8, residual_length=8)
    with method(model):
        out = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    cfg = model.config.text_config
    d, h, g = cfg.hidden_size // cfg.num_attention_heads, cfg.num_key_value_heads, 8
    logical = inputs["input_ids"].shape[1] + 5
    total = 0
    for layer in method.cache.layers:
        # Reference rule: keys are flushed 8 at a time (residual = logical mod 8), values keep the last 8.
        rk, rv = layer.keys.shape[-2], layer.values.shape[-2]
        assert rk == logical % 8 and rv == 8
        assert layer.n_quantized_keys + rk == logical == layer.n_quantized_values + rv
        n_groups = layer.n_quantized_keys // g
        total += n_groups * (h * g * d * 2 // 8 + 2 * h * d * 4)  # key codes + per-channel scale/zero (float32)
        # value codes + per-token scale/zero (one group of 8 channels)
        total += layer.n_quantized_values * (h * d * 2 // 8 + 2 * h * 4)
        total += h * (rk + rv) * d * 4
    assert method.cache.resident_bytes() == total
    assert method.cache.transient_bytes > 0
    ref = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    four = KIVI(bits=4, group_size=8, residual_length=8)
    with four(model):
        out4 = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    err2 = (torch.stack(out.logits) - torch.stack(ref.logits)).abs().mean()
    err4 = (torch.stack(out4.logits) - torch.stack(ref.logits)).abs().mean()
    assert 0 < err4 < err2
