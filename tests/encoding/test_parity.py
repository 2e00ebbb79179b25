"""Parity of the encoding-stage methods with their authors' code, on random tensors.

Each test re-implements the upstream rule in a few lines of our own, from the source cited in its
comment, and compares our default with it. The upstream code was read, not run (it needs CLIP or
a full LLaVA / Qwen2.5-VL checkpoint). Methods without public code (adaptive resolution, max-min
and learned keyframes, temporal merging's default ``merge`` mode, random pruning) have no test
here; their paper cards say so.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_impls.common.visual_tokens import keep_count
from reference_impls.encoding._base import Item
from reference_impls.encoding.pooling import pool_tokens
from reference_impls.encoding.prumerge import (
    PruMerge,
    distinctiveness,
    prumerge_merge,
    prumerge_select,
)
from reference_impls.encoding.temporal_merging import temporal_pool
from reference_impls.encoding.tome import ToMe, bipartite_soft_matching, tome_reduce
from reference_impls.encoding.visionzip import (
    received_attention,
    visionzip_reduce,
    visionzip_split,
)

SEEDS = range(20)


# --- ToMe -------------------------------------------------------------------------------------
# facebookresearch/ToMe tome/merge.py, bipartite_soft_matching + merge_wavg, read in the fork
# AdityaKane2001/ToMe @ 2417da520a437d13345c19ebd8b748cfa6683e08 (those functions unchanged).
# One round: r = min(r, N // 2); A = even rows, B = odd rows of the (cosine) metric; each A row's
# best B row; the r best edges (by decreasing similarity) merge by size-weighted sum; the output
# is cat([unmerged A rows in edge order, B rows]). The next round splits that order again.


def upstream_tome_round(x, size, index, r):
    r = min(r, x.shape[0] // 2)
    if r <= 0:
        return x, size, index
    metric = x / x.norm(dim=-1, keepdim=True)
    best, partner = (metric[0::2] @ metric[1::2].T).max(dim=-1)
    edges = best.argsort(descending=True)
    unmerged, merged = edges[r:], edges[:r]

    def merge(t):  # t: (N, C), summed into the B rows
        src, dst = t[0::2], t[1::2]
        dst = dst.index_add(0, partner[merged], src[merged])
        return torch.cat([src[unmerged], dst])

    mass, new_size = merge(x * size[:, None]), merge(size[:, None])
    new_index = torch.cat([index[0::2][unmerged], index[1::2]])  # a merged row stays with its B row
    return mass / new_size, new_size[:, 0], new_index


@pytest.mark.parametrize("seed", SEEDS)
def test_tome_matches_upstream_over_several_rounds(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(16, 120, (1,), generator=g))
    budget = float(torch.empty(1).uniform_(0.02, 0.5, generator=g))  # below half: several rounds
    keep = keep_count(n, budget)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    ux, usize, uindex = x, torch.ones(n, dtype=torch.float64), torch.arange(n)
    while ux.shape[0] > keep:
        ux, usize, uindex = upstream_tome_round(ux, usize, uindex, ux.shape[0] - keep)
    order = uindex.argsort()
    merged, size, rep = tome_reduce(x, keep)
    assert torch.equal(rep, uindex[order])
    torch.testing.assert_close(size.double(), usize[order])
    torch.testing.assert_close(merged, ux[order])
    method_features, method_rep = ToMe(budget=budget).reduce_item(Item(x, (1, 1, n), "image", 0, 0))
    assert torch.equal(method_rep, rep) and torch.equal(method_features, merged)  # the method's default


def test_tome_single_round_keeps_upstream_row_order():
    x = torch.randn(21, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ux, _, uindex = upstream_tome_round(x, torch.ones(21, dtype=torch.float64), torch.arange(21), 7)
    merged, _, rep = bipartite_soft_matching(x, torch.ones(21, dtype=torch.float64), torch.arange(21), 7)
    assert torch.equal(rep, uindex)
    torch.testing.assert_close(merged, ux)


def test_tome_sort_between_rounds_is_a_real_deviation():
    # every round but the last merges all of A; with an odd count one A row stays unmerged and
    # leads upstream's order, so the next round's A/B split differs from raster order
    differs = 0
    for seed in SEEDS:
        x = torch.randn(37, 8, generator=torch.Generator().manual_seed(seed))
        differs += not torch.equal(tome_reduce(x, 7)[2], tome_reduce(x, 7, sort_between_rounds=True)[2])
    assert differs > 0


# --- VisionZip --------------------------------------------------------------------------------
# dvlab-research/VisionZip Qwen2_5_VL/qwen2_5vl_visionzip.py (the authors' Qwen2.5-VL port), read
# in the fork jsilvcast/VisionZip @ 68993a31d4f704498a0cc1f0f026754467be65e2: dominant = top-k of
# the score; the other tokens in order; targets arange(0, R, max(1, R // c))[:c]; every other
# token goes to its most similar target (normalised keys); a contextual token is
# target + sum(assigned) / max(count, 1), placed at its target's position. The port's score: the
# last vision block's attention probabilities, mean over heads, summed over queries, then the mean
# over the 4 patches of a merged token.


def upstream_visionzip(x, scores, keys, dominant, contextual):
    n = x.shape[0]
    top = scores.topk(dominant).indices
    is_rest = torch.ones(n, dtype=torch.bool)
    is_rest[top] = False
    rest = is_rest.nonzero().flatten()
    metric = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    targets = torch.arange(0, rest.numel(), max(1, rest.numel() // contextual))[:contextual]
    others = ~torch.isin(torch.arange(rest.numel()), targets)
    assign = F.one_hot((metric[others] @ metric[targets].T).argmax(dim=-1), contextual).to(x.dtype)  # (No, Nc)
    counts = assign.sum(dim=0).clamp(min=1)[:, None]
    context = x[rest][targets] + assign.T @ x[rest][others] / counts
    rows, feats = torch.cat([top, rest[targets]]), torch.cat([x[top], context])
    order = rows.argsort()
    return feats[order], rows[order]


@pytest.mark.parametrize("seed", SEEDS)
def test_visionzip_matches_upstream(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(20, 200, (1,), generator=g))
    keep = int(torch.randint(8, n - 1, (1,), generator=g))
    dominant, contextual = visionzip_split(keep, n)
    x = torch.randn(n, 16, generator=g, dtype=torch.float64)
    scores, keys = torch.rand(n, generator=g, dtype=torch.float64), torch.randn(n, 8, generator=g, dtype=torch.float64)
    features, rep = visionzip_reduce(x, scores, keys, dominant, contextual)
    expected, expected_rep = upstream_visionzip(x, scores, keys, dominant, contextual)
    assert torch.equal(rep, expected_rep)
    torch.testing.assert_close(features, expected)


def test_visionzip_score_ranks_like_upstream():
    # one frame of L patches (window order): the port sums the head-mean attention over queries
    # and averages over each merged token's 4 patches; ours averages over queries and sums over
    # the patches, i.e. ours * L / 4.
    g = torch.Generator().manual_seed(0)
    length, heads, dim = 64, 4, 8
    q, k = torch.randn(length, heads, dim, generator=g), torch.randn(length, heads, dim, generator=g)
    probs = torch.softmax(q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2) / dim**0.5, dim=-1)  # (H, L, L)
    upstream = probs.mean(dim=0).sum(dim=0).view(-1, 4).mean(dim=-1)
    ours = received_attention(q, k, torch.tensor([0, length]), dim**-0.5).view(-1, 4).sum(dim=-1)
    torch.testing.assert_close(ours * length / 4, upstream)


# --- PruMerge ---------------------------------------------------------------------------------
# 42Shawn/LLaVA-PruMerge llava/model/multimodal_encoder/clip_encoder.py @
# 1ca8b2baa21b3614a8f1672c781b15af573f5b13, token_prune_merge_advanced (called by forward with
# if_adaptive=True): ratio = share of IQR outliers (> Q3 + 1.5 IQR) of the CLS attention; keep the
# top int(N * ratio) tokens; each kept token i becomes x_i + sum a_j x_j over its 32 most
# key-similar other tokens (kept or not, original features, no normalisation); one extra token
# sum_{not kept} a_j x_j is appended.


def upstream_prumerge(x, attn, keys, k=32):
    n = x.shape[0]
    q1, q3 = torch.quantile(attn, 0.25), torch.quantile(attn, 0.75)
    ratio = int((attn > q3 + 1.5 * (q3 - q1)).sum()) / n
    kept = attn.topk(int(n * ratio)).indices
    normed = F.normalize(keys, dim=-1)
    updated = []
    for i in kept.tolist():
        others = torch.tensor([j for j in range(n) if j != i])
        nearest = others[(normed[others] @ normed[i]).topk(k).indices]
        updated.append(x[i] + (attn[nearest, None] * x[nearest]).sum(dim=0))
    pruned = torch.tensor([j for j in range(n) if j not in set(kept.tolist())])
    extra = (attn[pruned, None] * x[pruned]).sum(dim=0)
    return kept, torch.stack(updated), extra, pruned


@pytest.mark.parametrize("seed", SEEDS)
def test_prumerge_matches_upstream(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(60, 300, (1,), generator=g))
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    logits[torch.randperm(n, generator=g)[: n // 20]] += 4.0  # a few strongly attended patches
    attn = torch.softmax(logits, dim=0)
    x, keys = torch.randn(n, 16, generator=g, dtype=torch.float64), torch.randn(n, 8, generator=g, dtype=torch.float64)
    kept_up, updated, extra, pruned = upstream_prumerge(x, attn, keys)
    kept = prumerge_select(attn, None)  # our adaptive selection: the IQR outliers
    assert torch.equal(kept, kept_up.sort().values)
    features, rep = prumerge_merge(x, kept, attn, keys)
    assert torch.equal(rep, torch.cat([kept, pruned[-1:]]).sort().values)
    by_rep = dict(zip(rep.tolist(), features))
    for i, row in zip(kept_up.tolist(), updated):
        torch.testing.assert_close(by_rep[i], row)
    torch.testing.assert_close(by_rep[int(pruned[-1])], extra)


@pytest.mark.parametrize("seed", range(5))
def test_prumerge_method_default_applies_the_upstream_merge(seed):
    # adaptive count as upstream; the score (ours: distinctiveness, normalised to sum 1) stands
    # in for the CLS attention and the features for the keys
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 8, generator=g, dtype=torch.float64)
    x[torch.randperm(100, generator=g)[:5]] *= 4.0  # a few distinctive tokens
    weights = distinctiveness(x) / distinctiveness(x).sum()
    kept_up, updated, extra, pruned = upstream_prumerge(x, weights, x)
    features, rep = PruMerge(adaptive=True).reduce_item(Item(x, (1, 10, 10), "image", 0, 0))
    assert rep.tolist() == sorted(kept_up.tolist() + [int(pruned[-1])])
    by_rep = dict(zip(rep.tolist(), features))
    for i, row in zip(kept_up.tolist(), updated):
        torch.testing.assert_close(by_rep[i], row)
    torch.testing.assert_close(by_rep[int(pruned[-1])], extra)
    features, rep = PruMerge(budget=0.25).reduce_item(Item(x, (1, 10, 10), "image", 0, 0))
    assert features.shape == (keep_count(100, 0.25), 8) == (rep.numel(), 8)  # the extra token included


# --- Projector pooling (DeCo) -----------------------------------------------------------------
# yaolinli/DeCo README.md @ 103416e7fc9106205712152252245fe3f1979ad7, AvgPoolProjector: the
# patch tokens, laid out (h w) row-major, go through nn.AdaptiveAvgPool2d((h', w')) and are read
# back row-major; the pooled tokens then enter the projector MLP.


@pytest.mark.parametrize("grid,out", [((1, 8, 8), (4, 4)), ((2, 6, 9), (3, 5)), ((1, 7, 5), (2, 2))])
def test_projector_pooling_matches_deco(grid, out):
    t, h, w = grid
    x = torch.randn(t * h * w, 10, generator=torch.Generator().manual_seed(h * w))
    pooled, _ = pool_tokens(x, grid, out)
    upstream = torch.nn.AdaptiveAvgPool2d(out)(x.view(t, h, w, 10).permute(0, 3, 1, 2))  # (t, D, h', w')
    torch.testing.assert_close(pooled, upstream.permute(0, 2, 3, 1).reshape(-1, 10))


# --- Temporal pooling (Video-ChatGPT) ---------------------------------------------------------
# mbzuai-oryx/Video-ChatGPT video_chatgpt/inference.py @ 69ea1db32aa8a6406620e615f227754f0f967c08,
# get_spatio_temporal_features_torch: of (T, S, C) frame features, the "spatial tokens" are the
# mean over the T frames of each of the S positions (the other half, one mean token per frame, has
# no counterpart here). TemporalMerging(mode="pool") with window = T computes exactly those.


def test_temporal_pool_over_the_whole_clip_matches_video_chatgpt():
    x = torch.randn(6, 12, 8, generator=torch.Generator().manual_seed(0))
    pooled, rep = temporal_pool(x, window=6)
    torch.testing.assert_close(pooled, x.mean(dim=0))
    assert rep.tolist() == list(range(12))
