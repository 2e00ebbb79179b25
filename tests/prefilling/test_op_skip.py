"""Operation skipping (GSOP rule) on a tiny Qwen2.5-VL: parity with upstream's layer, cache, stats."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl, visual_mask
from reference_impls.prefilling.op_skip import (
    OperationSkip,
    operation_indices,
    skip_layer,
    skipped_layers,
    visual_flop_fraction,
)

torch.set_num_threads(1)
NUM_LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=2, num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((8, 8), (4, 8)), prompt_before=4, prompt_after=5, seed=5)


# ---- upstream's rule, re-implemented from zxcvfd13502/GSOP modeling_llama.py @ aa58160 -----------------


def _upstream_indices(n: int, groups: list[list[int]], skip_group_op: list[tuple[int, int, int]]):
    """``process_indices``: per operation (0 keys/values, 1 queries, 2 FFN) all tokens minus skipped groups."""
    sets = [set(range(n))] * 3
    for group, op, _ in skip_group_op:
        sets[op] = sets[op] - set(groups[group])
    return [sorted(s) for s in sets]


def _upstream_layer(layer, hidden, cos, sin, additive_mask, out_idx, in_idx, mlp_idx):
    """``LlamaDecoderLayer.forward`` with ``gsop_indices``: eager attention of the ``in`` rows over the
    ``out`` columns, residual updated in place on ``in`` rows, then the FFN on ``mlp`` rows."""
    attn = layer.self_attn
    b = hidden.shape[0]
    residual = hidden.clone()
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x[:, in_idx]).view(b, len(in_idx), -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x[:, out_idx]).view(b, len(out_idx), -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x[:, out_idx]).view(b, len(out_idx), -1, attn.head_dim).transpose(1, 2)
    q = q * cos[:, in_idx, None].transpose(1, 2) + _rotate_half(q) * sin[:, in_idx, None].transpose(1, 2)
    k = k * cos[:, out_idx, None].transpose(1, 2) + _rotate_half(k) * sin[:, out_idx, None].transpose(1, 2)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    weights = q @ k.transpose(2, 3) / math.sqrt(attn.head_dim)
    weights = weights + additive_mask[:, :, in_idx][:, :, :, out_idx]
    out = weights.softmax(-1, dtype=torch.float32).to(q.dtype) @ v
    out = attn.o_proj(out.transpose(1, 2).reshape(b, len(in_idx), -1))
    residual[:, in_idx] += out
    normed = layer.post_attention_layernorm(residual)
    residual[:, mlp_idx] += layer.mlp(normed[:, mlp_idx])
    return residual


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def _layer_inputs(model, inputs, layer: int):
    """Hidden states, rotary embeddings and the visual mask entering ``layer`` of the unpatched model."""
    seen = {}

    def hook(module, args, kwargs):
        seen["hidden"], (seen["cos"], seen["sin"]) = (
            args[0] if args else kwargs["hidden_states"],
            kwargs["position_embeddings"],
        )

    text = model.model.language_model
    handle = text.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["hidden"], seen["cos"], seen["sin"], visual_mask(inputs["input_ids"], model.config)[0]


@pytest.mark.parametrize("ops", [(), ("query",), ("mlp",), ("query", "mlp"), ("kv",), ("kv", "query", "mlp")])
def test_indices_match_upstream(ops):
    generator = torch.Generator().manual_seed(len(ops))
    n = 40
    groups = [torch.randperm(n, generator=generator)[:12].sort().values, torch.arange(30, 35)]
    skipped = [(g, op) for g in (0, 1) for op in ops]
    ours = operation_indices(n, groups, skipped)
    codes = {"kv": 0, "query": 1, "mlp": 2}
    theirs = _upstream_indices(n, [g.tolist() for g in groups], [(g, codes[op], 0) for g, op in skipped])
    assert [o.tolist() for o in ours] == theirs


@pytest.mark.parametrize("ops", [(), ("query",), ("mlp",), ("query", "mlp")])
@pytest.mark.parametrize("layer", [0, 3])
def test_layer_matches_upstream(model, inputs, ops, layer):
    hidden, cos, sin, visual = _layer_inputs(model, inputs, layer)
    n = hidden.shape[1]
    kv, query, mlp = operation_indices(n, [visual.nonzero()[:, 0]], [(0, op) for op in ops])
    decoder = model.model.language_model.layers[layer]
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]  # (1, 1, N, N) additive
    with torch.no_grad():
        # Layer 3 is given upstream's additive mask, layer 0 none (causal by index).
        ours = skip_layer(decoder, hidden, (cos, sin), query, mlp, causal if layer else None)
        theirs = _upstream_layer(decoder, hidden, cos, sin, causal, kv.tolist(), query.tolist(), mlp.tolist())
        full = decoder(hidden, position_embeddings=(cos, sin), attention_mask=None)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if not ops:  # nothing skipped: the unpatched layer
        torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    if set(ops) == {"query", "mlp"}:  # a visual token passes the layer unchanged
        assert torch.equal(ours[:, visual], hidden[:, visual])
        assert not torch.allclose(ours[:, ~visual], hidden[:, ~visual])


def test_budget_one_is_bit_exact(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        method = OperationSkip(budget=1.0)
        with method(model):
            assert torch.equal(model(**inputs).logits, logits)
            assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), tokens)
    assert method.stats["skipped_layers"] == [] and method.stats["visual_flops"] == 1.0
    assert not any("forward" in vars(layer) for layer in model.model.language_model.layers)  # patch removed


def test_shallow_layers_unchanged_and_deep_ones_skip(model, inputs):
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(NUM_LAYERS)}
    layers = model.model.language_model.layers
    handles = [
        layer.register_forward_hook(lambda m, a, k, out, i=i: outputs[i].append(out), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    method = OperationSkip(budget=0.5)
    try:
        with torch.no_grad():
            model(**inputs)
            with method(model):
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    visual = visual_mask(inputs["input_ids"], model.config)[0]
    assert method.stats["skipped_layers"] == skipped_layers(0.5, NUM_LAYERS) == [2, 3]
    assert method.stats["visual_kept"] == method.stats["visual_in"] == int(visual.sum()) == 24
    for i in (0, 1):
        assert torch.equal(outputs[i][0], outputs[i][1])
    # Layers 2 and 3 leave the visual tokens as layer 1 left them.
    assert torch.equal(outputs[3][1][:, visual], outputs[1][1][:, visual])
    assert not torch.allclose(outputs[3][1][:, ~visual], outputs[3][0][:, ~visual])


def test_decoding_from_the_cache_matches_a_longer_prefill(model, inputs):
    """The cache written by the patched prefill serves decoding: the next token's logits equal those
    of a patched prefill of the prompt plus that token (a text token, computed in full either way)."""
    method = OperationSkip(budget=0.25)
    with torch.no_grad(), method(model):
        out = model.generate(
            **inputs, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        longer = dict(inputs)
        longer["input_ids"] = out.sequences[:, :-1]
        longer["attention_mask"] = torch.ones_like(longer["input_ids"])
        longer["mm_token_type_ids"] = visual_mask(longer["input_ids"], model.config).long()
        logits = model(**longer).logits[:, -1]
    torch.testing.assert_close(out.logits[1], logits, rtol=1e-4, atol=1e-4)


def test_flop_fraction_and_policy(model):
    config = model.config.text_config
    everything = {i: ("query", "mlp") for i in range(config.num_hidden_layers)}
    d, hd = config.hidden_size, config.hidden_size // config.num_attention_heads
    kv = 2 * d * config.num_key_value_heads * hd
    per_layer = kv + 2 * d * config.num_attention_heads * hd + 3 * d * config.intermediate_size
    assert visual_flop_fraction(config, everything) == pytest.approx(kv / per_layer)
    assert visual_flop_fraction(config, {}) == 1.0
    method = OperationSkip(policy=((1, "mlp"), (3, "query"), (3, "mlp")))
    assert method.schedule(NUM_LAYERS) == {1: ("mlp",), 3: ("mlp", "query")}
    with pytest.raises(ValueError, match="op must be"):
        OperationSkip(ops=("kv",)).schedule(NUM_LAYERS)
    with pytest.raises(ValueError, match="budget"):
        with OperationSkip(budget=0.0)(model):
            pass


def test_attention_softcapping_is_refused(model, inputs):
    """Gemma 2's attention-logit soft-capping is not rebuilt: refused by name (every other family runs;
    tests/test_architectures.py checks the layer on each)."""
    from reference_impls.common.architectures import UnsupportedFeature

    hidden, cos, sin, visual = _layer_inputs(model, inputs, 0)
    layer = model.model.language_model.layers[0]
    _, query, mlp = operation_indices(hidden.shape[1], [visual.nonzero()[:, 0]], [(0, "mlp")])
    layer.self_attn.attn_logit_softcapping = 50.0
    try:
        with pytest.raises(UnsupportedFeature, match="soft-capping"):
            skip_layer(layer, hidden, (cos, sin), query, mlp)
    finally:
        del layer.self_attn.attn_logit_softcapping
    with pytest.raises(ValueError, match="norms"):
        skip_layer(layer, hidden, (cos, sin), query, mlp, norms="post")
