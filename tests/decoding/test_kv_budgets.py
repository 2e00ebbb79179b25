"""Budget allocation and scores: exact sums, floors, top-k and the pyramid schedule."""

from __future__ import annotations

import pytest
import torch

from reference_impls.decoding.adakv import adaptive_head_index
from reference_impls.decoding.hybridkv.plan import hierarchical_budgets, mean_budget
from reference_impls.decoding.kv_scores import (
    accumulated_attention,
    allocate_with_floor,
    merge_evicted,
    pooled_scores,
    pyramid_budgets,
    window_attention,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", range(6))
def test_allocate_with_floor_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    groups, cols = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(3, 40, (1,), generator=g))
    scores = torch.rand(groups, cols, generator=g) ** 4
    total = int(torch.randint(groups, groups * cols + 1, (1,), generator=g))
    floor = int(0.2 * total / groups)
    counts, selected = allocate_with_floor(scores, total, floor)
    assert int(counts.sum()) == total == int(selected.sum())
    assert bool((counts >= floor).all()) and bool((counts <= cols).all())
    # Beyond the floors, the selection is the global top: no unselected entry beats a selected
    # non-floor one.
    floor_picks = torch.zeros_like(selected)
    for row in range(groups):
        floor_picks[row, torch.sort(scores[row], descending=True, stable=True).indices[:floor]] = True
    extra = selected & ~floor_picks
    if extra.any() and (~selected).any():
        assert scores[extra].min() >= scores[~selected].max()


def test_allocate_respects_validity_and_raises():
    scores = torch.tensor([[5.0, 4.0, 3.0], [1.0, 0.5, 0.1]])
    valid = torch.tensor([[True, False, True], [True, True, True]])
    counts, selected = allocate_with_floor(scores, 3, 1, valid)
    assert counts.tolist() == [2, 1] and not selected[0, 1]
    with pytest.raises(ValueError):
        allocate_with_floor(scores, 6, 0, valid)
    with pytest.raises(ValueError):
        allocate_with_floor(scores, 2, 2)


@pytest.mark.parametrize(
    "layers,mean,window,cap", [(8, 40, 8, None), (3, 17, 4, None), (5, 30, 30, None), (4, 90, 8, 100)]
)
def test_pyramid_budgets_sum_exactly(layers, mean, window, cap):
    budgets = pyramid_budgets(layers, mean, window, cap=cap)
    assert sum(budgets) == layers * mean
    assert budgets == sorted(budgets, reverse=True) or cap is not None
    assert min(budgets) >= window
    if cap is not None:
        assert max(budgets) <= cap


@pytest.mark.parametrize("seed", range(5))
def test_hierarchical_budgets_sums_and_floors(seed):
    g = torch.Generator().manual_seed(seed)
    n_layers, n_heads, n = 4, 2, 50
    scores = torch.rand(n_layers, n_heads, n, generator=g) ** 3
    cand = torch.ones(n, dtype=torch.bool)
    cand[:3] = False
    cand[-5:] = False
    r, alpha = 8, 0.2
    full = (1,) if seed % 2 else ()
    b = mean_budget(0.5 if full else 0.2, n, r)
    budgets, layer_alloc = hierarchical_budgets(scores, cand, b, r, alpha, full)
    assert int(budgets.sum()) == b * n_layers * n_heads
    assert bool((budgets <= n).all()) and bool((budgets >= r).all())
    compressed = [l for l in range(n_layers) if l not in full]
    free = b * n_layers * n_heads - len(full) * n * n_heads - len(compressed) * n_heads * r
    assert int(layer_alloc[compressed].sum()) == free
    f_layer = int(alpha * free / len(compressed))
    for l in compressed:
        assert int(budgets[l].sum()) == r * n_heads + int(layer_alloc[l])
        assert int(layer_alloc[l]) >= f_layer
        assert bool(((budgets[l] - r) >= int(alpha * int(layer_alloc[l]) / n_heads)).all())
    for l in full:
        assert bool((budgets[l] == n).all())


def test_budget_infeasible_and_mean_budget():
    scores = torch.rand(2, 2, 20)
    cand = torch.ones(20, dtype=torch.bool)
    cand[:6] = False
    with pytest.raises(ValueError, match="infeasible"):
        hierarchical_budgets(scores, cand, mean_budget(5, 20, 6), 6)  # b=5 < r + 1
    with pytest.raises(ValueError, match="infeasible"):
        hierarchical_budgets(scores, cand, 8, 6, full_layers=(0,))
    assert mean_budget(0.01, 200, 9) == 10  # raised to hold the reserved entries
    assert mean_budget(0.1, 200, 9) == 20 and mean_budget(300, 200, 9) == 200
    with pytest.raises(ValueError):
        mean_budget(1.5, 10, 2)


def test_adaptive_head_index_keeps_window_and_total():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 0.0, 0.0], [0.1, 0.2, 0.1, 0.0, 0.0, 0.0]])
    index = adaptive_head_index(scores, budget=4, window=2, alpha=0.0)
    assert [len(i) for i in index] == [6, 2]  # head 0 earns all four free slots
    index = adaptive_head_index(scores, budget=4, window=2, alpha=0.5)
    assert [len(i) for i in index] == [5, 3]  # the floor guarantees head 1 one slot
    assert all({4, 5} <= set(i.tolist()) for i in index)


def test_scores_match_hand_computation():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    rows = torch.tensor([7, 9])
    attn = window_attention(q, k, rows, 0.5)
    full = (
        (torch.einsum("hqd,hkd->hqk", q[0], k[0].repeat_interleave(2, 0)) * 0.5)
        .masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
        .softmax(-1)
    )
    torch.testing.assert_close(attn, full[:, rows].view(2, 2, 2, 10).mean(1))
    torch.testing.assert_close(accumulated_attention(q, k, 0.5, block=3), full.sum(1).view(2, 2, 10).sum(1))
    torch.testing.assert_close(pooled_scores(attn, 1), attn.mean(1))
    assert torch.allclose(pooled_scores(attn, 3)[:, 4], attn.mean(1)[:, 3:6].mean(-1))


def test_merge_evicted_averages_into_most_similar():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.0, 2.0]])
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    text = torch.tensor([True, True, False, True])
    k, v = merge_evicted(keys, values, torch.tensor([0, 1]), torch.tensor([2, 3]), text)
    torch.testing.assert_close(k[0], torch.tensor([0.95, 0.05]))  # visual row 2 merged into row 0
    torch.testing.assert_close(v[:2, 0], torch.tensor([2.0, 2.0]))  # text row 3 dropped, not merged
