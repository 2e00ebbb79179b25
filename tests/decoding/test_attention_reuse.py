"""Cross-layer attention reuse: identity without sharers, brute-force sharer output, generate, FLOPs, restore."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl, visual_mask
from reference_impls.decoding.attention_reuse import (
    ATTENTION_NAME,
    AttentionReuse,
    attention_flops,
    attention_probs,
    blend_probs,
    resolve_sources,
    reuse_attention,
    row_blocks,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=0, num_layers=4)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((8, 8), (4, 4)), prompt_before=6, prompt_after=5, seed=1)


@torch.no_grad()
def _logits(model, inputs):
    return model(**inputs).logits


def test_resolve_sources():
    assert resolve_sources(4, share_every=1) == {}
    assert resolve_sources(4, share_every=2) == {1: 0, 3: 2}
    assert resolve_sources(4, anchors=[0]) == {1: 0, 2: 0, 3: 0}
    assert resolve_sources(4, anchors=[0, 2], share_every=3) == {1: 0, 3: 2}
    assert resolve_sources(4, sources={2: 1, 1: 0}) == {1: 0, 2: 0}  # chains resolve to the computing layer
    with pytest.raises(ValueError):
        resolve_sources(4, sources={1: 2})
    with pytest.raises(ValueError):
        resolve_sources(4, anchors=[1, 2])


@pytest.mark.parametrize("phase", ["prefill", "decode", "both"])
def test_no_sharer_reproduces_the_model_exactly(model, inputs, phase):
    reference = _logits(model, inputs)
    with AttentionReuse(share_every=1, phase=phase)(model):
        assert torch.equal(_logits(model, inputs), reference)
    with AttentionReuse(share_every=2)(model):  # and reuse does change the output (the test can fail)
        assert not torch.allclose(_logits(model, inputs), reference, atol=1e-4)


def test_sharer_output_is_anchor_probs_times_own_values(model, inputs):
    """Layer 3 reusing layer 1: o_proj(softmax(q1 k1^T) @ v3), recomputed from captured hidden states."""
    captured = {}

    def grab(name):
        def hook(module, args, kwargs, output):
            captured[name] = (kwargs["hidden_states"], kwargs["position_embeddings"], output[0])

        return hook

    layers = model.model.language_model.layers
    handles = [layers[i].self_attn.register_forward_hook(grab(i), with_kwargs=True) for i in (1, 3)]
    try:
        with AttentionReuse(sources={3: 1}, block=8)(model):
            _logits(model, inputs)
    finally:
        for handle in handles:
            handle.remove()

    def project(attn, hidden, rope):
        b, n, _ = hidden.shape
        d = attn.head_dim
        q = attn.q_proj(hidden).view(b, n, -1, d).transpose(1, 2)
        k = attn.k_proj(hidden).view(b, n, -1, d).transpose(1, 2)
        v = attn.v_proj(hidden).view(b, n, -1, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        return q, k, v

    with torch.no_grad():
        hidden1, rope, _ = captured[1]
        q, k, _ = project(layers[1].self_attn, hidden1, rope)
        hidden3, rope3, out3 = captured[3]
        _, _, v = project(layers[3].self_attn, hidden3, rope3)
        n, groups = q.shape[2], q.shape[1] // k.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        expected = torch.zeros_like(q)
        for h in range(q.shape[1]):  # head by head: query head h reads KV head h // groups
            logits = (q[0, h] @ k[0, h // groups].T) * layers[1].self_attn.scaling
            probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
            expected[0, h] = probs @ v[0, h // groups]
        expected = layers[3].self_attn.o_proj(expected.transpose(1, 2).reshape(1, n, -1))
    torch.testing.assert_close(out3, expected, atol=1e-5, rtol=1e-5)


def test_blocked_probs_equal_dense_ones():
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 11, 5), torch.randn(1, 2, 14, 5), torch.randn(1, 2, 14, 5)
    mask = torch.ones(11, 14, dtype=torch.bool).tril(3)[None, None]
    dense = attention_probs(query, key, 0.5, mask)
    blocked = attention_probs(query, key, 0.5, mask, block=4)
    torch.testing.assert_close(blocked, dense)
    torch.testing.assert_close(reuse_attention(blocked, value, block=4), reuse_attention(dense, value))
    assert row_blocks(11, 14, 4) == [(0, 4, 7), (4, 8, 11), (8, 11, 14)]


def test_blend_probs_brute_force():
    torch.manual_seed(0)
    anchor = torch.rand(1, 4, 3, 7).softmax(-1)
    query, key = torch.randn(1, 4, 3, 5), torch.randn(1, 2, 7, 5)
    reused = torch.tensor([[False, True, True, False, True, True, False]])
    mask = torch.ones(3, 7, dtype=torch.bool).tril(4)[None, None]
    out = blend_probs(anchor.clone(), query, key, reused, 0.5, mask)
    for h in range(4):
        for i in range(3):
            own = [j for j in range(7) if not reused[0, j] and mask[0, 0, i, j]]
            logits = torch.stack([query[0, h, i] @ key[0, h // 2, j] * 0.5 for j in own])
            mass = sum(float(anchor[0, h, i, j]) for j in range(7) if reused[0, j])
            for j in range(7):
                want = (
                    anchor[0, h, i, j]
                    if reused[0, j]
                    else (logits.softmax(0)[own.index(j)] * (1 - mass) if j in own else 0.0)
                )
                assert abs(float(out[0, h, i, j]) - float(want)) < 1e-6
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 4, 3))


@pytest.mark.parametrize("columns", ["all", "visual"])
def test_generate_with_cache_matches_recomputing_the_prompt(model, inputs, columns):
    """Prefill + cached decode steps give the logits of a cache-free forward of the whole sequence."""
    n, steps = inputs["input_ids"].shape[1], 4
    with AttentionReuse(anchors=(0, 2), columns=columns, block=8)(model) as method:
        out = model.generate(
            **inputs,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        assert method.stats["reused_calls"] == 2 * steps  # layers 1 and 3, prefill + 3 decode steps
        full = dict(
            inputs,
            input_ids=out.sequences,
            attention_mask=torch.ones_like(out.sequences),
            mm_token_type_ids=visual_mask(out.sequences, model.config).long(),
        )
        recomputed = _logits(model, full)[0, n - 1 : n - 1 + steps]
    torch.testing.assert_close(torch.stack(out.logits)[:, 0], recomputed, atol=1e-4, rtol=1e-4)


def test_decode_only_phase_leaves_the_prefill_alone(model, inputs):
    reference = _logits(model, inputs)
    with AttentionReuse(anchors=(0,), phase="decode")(model) as method:
        assert torch.equal(_logits(model, inputs), reference)
        assert method.stats.get("reused_calls", 0) == 0


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_flops_match_the_torch_counter(model, inputs, phase):
    """Per attention module: counted matmul FLOPs == analytic (softmax is not counted by torch)."""
    cfg = model.config.text_config
    dims = dict(
        hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
    )
    n = inputs["input_ids"].shape[1]
    n_text = n - int(visual_mask(inputs["input_ids"], model.config).sum())
    for columns in ("all", "visual"):
        # Anchors 0 and 2 both have sharers: every layer runs our (countable) math, in blocks of 8 rows.
        method = AttentionReuse(share_every=2, columns=columns, block=8)
        with method(model), torch.no_grad():
            if phase == "prefill":
                with FlopCounterMode(display=False) as counter:
                    out = model(**inputs, use_cache=True)
                m, s, own = n, n, n_text
            else:
                out = model(**inputs, use_cache=True)
                with FlopCounterMode(display=False) as counter:  # positions do not change FLOPs
                    model(input_ids=torch.tensor([[9]]), cache=out.past_key_values, use_cache=True)
                m, s, own = 1, n + 1, n_text + 1
        counts = counter.get_flop_counts()
        for layer in range(4):
            key = f"Qwen2_5_VLForConditionalGeneration.model.language_model.layers.{layer}.self_attn"
            reused = layer % 2 == 1
            want = attention_flops(
                m, s, reused=reused, own_columns=own if columns == "visual" else None, block=8, **dims
            )
            assert sum(counts[key].values()) == want["total"] - want["softmax"], (columns, layer)
    full, shared = attention_flops(n, n, **dims), attention_flops(n, n, reused=True, **dims)
    assert full["total"] - shared["total"] == full["qk"] + full["softmax"]
    assert shared["qk_proj_skippable"] == full["q_proj"] + full["k_proj"]
    # Blocks skip keys past each block: between causal (n(n+1)/2 pairs) and dense (n^2).
    assert full["qk"] == 2 * dims["heads"] * n * n * dims["head_dim"]
    blocked = attention_flops(n, n, block=1, **dims)["qk"]
    assert blocked == 2 * dims["heads"] * n * (n + 1) // 2 * dims["head_dim"]


def test_context_manager_restores_the_model(model, inputs):
    reference = _logits(model, inputs)
    attentions = [layer.self_attn for layer in model.model.language_model.layers]
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionReuse(share_every=2)(model):
            assert model.config.text_config._attn_implementation == ATTENTION_NAME
            raise RuntimeError("boom")
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not any(hasattr(a, "_atlas_attention_reuse") for a in attentions)
    assert not model.model._forward_pre_hooks
    assert torch.equal(_logits(model, inputs), reference)


def test_decoding_contract(model, inputs):
    result = AttentionReuse(share_every=2)(model, inputs, max_new_tokens=5)
    with AttentionReuse(share_every=2)(model):
        want = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert result.tokens == want.tolist()
    assert result.stats["visual_kept"] == result.stats["visual_in"] == 16 + 4
