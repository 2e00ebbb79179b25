"""Block-sparse prefill attention: exact with a full pattern, equal to a dense masked reference otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.prefilling.block_sparse import (
    ATTENTION_NAME,
    BlockSparseAttention,
    block_pattern,
    block_sparse_attention,
    pattern_to_mask,
)

torch.set_num_threads(1)


def _qkv(n=45, heads=4, kv_heads=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, dim, generator=generator)
    k = torch.randn(2, kv_heads, n, dim, generator=generator)
    v = torch.randn(2, kv_heads, n, dim, generator=generator)
    visual = torch.zeros(2, n, dtype=torch.bool)
    visual[:, 6:38] = True  # text, a long visual span, text
    visual[1, 20:22] = False
    return q, k, v, visual


def _dense_reference(q, k, v, mask):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None], scale=q.shape[-1] ** -0.5, enable_gqa=True
    ).transpose(1, 2)


@pytest.mark.parametrize("budget", [0.1, 0.4, 0.7])
@pytest.mark.parametrize("block_size", [4, 7])
def test_block_path_equals_dense_masked_reference(budget, block_size):
    q, k, v, visual = _qkv()
    pattern = block_pattern(q, k, visual, block_size=block_size, budget=budget)
    mask = pattern_to_mask(pattern, q.shape[2], block_size)
    assert not bool(mask.all(-1).all())  # really sparse
    out = block_sparse_attention(q, k, v, pattern, block_size=block_size, scaling=q.shape[-1] ** -0.5)
    torch.testing.assert_close(out, _dense_reference(q, k, v, mask), atol=1e-6, rtol=1e-5)


def test_block_path_with_padding_mask_equals_reference():
    q, k, v, visual = _qkv()
    n, block_size = q.shape[2], 5
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, :3] = False  # left padding in row 1
    given = padding[:, None, None, :] & torch.ones(n, n, dtype=torch.bool).tril()  # (B, 1, N, N)
    pattern = block_pattern(q, k, visual, block_size=block_size, budget=0.3)
    out = block_sparse_attention(
        q, k, v, pattern, block_size=block_size, scaling=q.shape[-1] ** -0.5, attention_mask=given
    )
    reference = _dense_reference(q, k, v, pattern_to_mask(pattern, n, block_size) & given[:, 0])
    torch.testing.assert_close(out[:, 3:], reference[:, 3:], atol=1e-6, rtol=1e-5)  # padded queries are don't-care


def test_pattern_structure():
    q, k, v, visual = _qkv(n=64)
    block_size, budget = 4, 0.25
    pattern = block_pattern(q, k, visual, block_size=block_size, budget=budget, sink_blocks=1, local_blocks=1)
    nb = pattern.shape[1]
    assert bool((pattern & ~torch.ones(nb, nb, dtype=torch.bool).tril()).sum() == 0)  # causal
    has_text = (~visual).view(2, nb, block_size).any(-1)
    for b in range(2):
        for i in range(nb):
            row = pattern[b, i]
            if has_text[b, i]:
                assert bool(row[: i + 1].all())  # text query blocks are dense
                continue
            assert bool(row[0]) and bool(row[max(0, i - 1) : i + 1].all())  # sink + local + diagonal
            assert bool(row[: i + 1][has_text[b, : i + 1]].all())  # every text block
            fixed = int(((torch.arange(i + 1) == 0) | (torch.arange(i + 1) >= i - 1) | has_text[b, : i + 1]).sum())
            assert int(row.sum()) == max(fixed, -(-int(budget * 4 * (i + 1)) // 4))


def test_topk_blocks_are_the_highest_block_mean_scores():
    q, k, v, visual = _qkv(n=64, seed=3)
    visual[:] = True  # no text: only sink/local are fixed
    pattern = block_pattern(q, k, visual, block_size=4, budget=0.5, sink_blocks=0, local_blocks=0)
    q_mean, k_mean = q.view(2, 4, 16, 4, 8).mean(3), k.view(2, 2, 16, 4, 8).mean(3)
    scores = (q_mean @ k_mean.repeat_interleave(2, 1).transpose(-1, -2)).mean(1)
    i = 15
    free = pattern[0, i, :i].clone()  # the diagonal is fixed (local_blocks=0 still reads it)
    expected = scores[0, i, :i].topk(int(free.sum())).indices
    assert set(free.nonzero()[:, 0].tolist()) == set(expected.tolist())


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=2)


@pytest.fixture(scope="module")
def long_inputs(model):
    return tiny_inputs(model, grids=((16, 16),), prompt_before=5, prompt_after=6, seed=1)


def test_full_pattern_is_exactly_sdpa(model, long_inputs):
    with torch.no_grad():
        logits = model(**long_inputs).logits
        tokens = model.generate(**long_inputs, max_new_tokens=4, do_sample=False)
    method = BlockSparseAttention(budget=1.0, block_size=8)
    with method(model), torch.no_grad():
        assert model.config.text_config._attn_implementation == ATTENTION_NAME
        assert torch.equal(model(**long_inputs).logits, logits)
        assert torch.equal(model.generate(**long_inputs, max_new_tokens=4, do_sample=False), tokens)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert method.stats["density"] == 1.0


def test_sparse_model_prefill_and_decode(model, long_inputs):
    method = BlockSparseAttention(budget=0.2, block_size=8)
    with torch.no_grad():
        dense = model(**long_inputs).logits
    with method(model), torch.no_grad():
        sparse = model(**long_inputs).logits
        tokens = model.generate(**long_inputs, max_new_tokens=4, do_sample=False)
    assert method.stats["visual_in"] == method.stats["visual_kept"] == 64
    assert 0 < method.stats["density"] < 1
    assert torch.isfinite(sparse).all() and not torch.equal(sparse, dense)
    assert tokens.shape[1] == long_inputs["input_ids"].shape[1] + 4
