"""Pure tensor functions of the encoding-stage methods: constructed examples with known answers."""

from __future__ import annotations

import pytest
import torch

from reference_impls.encoding.adaptive_resolution import choose_grid, edge_density, image_to_patches, patches_to_image
from reference_impls.encoding.keyframes import frame_thumbnails, select_keyframes
from reference_impls.encoding.pooling import pool_tokens, pooled_grid
from reference_impls.encoding.prumerge import iqr_outliers, prumerge_merge, prumerge_select
from reference_impls.encoding.tome import bipartite_soft_matching, tome_reduce
from reference_impls.encoding.visionzip import received_attention, visionzip_reduce, visionzip_split


@pytest.mark.parametrize("keep", [37, 30, 19, 18, 7, 1])
def test_tome_preserves_size_weighted_mass(keep):
    x = torch.randn(37, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    merged, size, rep = tome_reduce(x, keep)
    assert merged.shape == (keep, 8) and size.sum() == 37
    torch.testing.assert_close((merged * size[:, None].double()).sum(0), x.sum(0))
    assert torch.equal(rep, rep.sort().values) and rep.unique().numel() == keep


def test_tome_merges_the_most_similar_pair_into_its_b_token():
    x = torch.eye(6)
    x[2] = x[3] + 1e-3 * x[0]  # A token 2 almost equals B token 3
    merged, size, rep = bipartite_soft_matching(x, torch.ones(6), torch.arange(6), r=1)
    # upstream's order: unmerged A rows (0, 4), then every B row (1, 3, 5)
    assert rep.tolist() == [0, 4, 1, 3, 5]
    assert size.tolist() == [1, 1, 1, 2, 1]
    torch.testing.assert_close(merged[3], (x[2] + x[3]) / 2)


def test_prumerge_selection_picks_outliers():
    scores = torch.full((32,), 1.0) + 0.01 * torch.randn(32, generator=torch.Generator().manual_seed(0))
    scores[[5, 17, 30]] = torch.tensor([7.0, 9.0, 8.0])
    assert iqr_outliers(scores).nonzero().flatten().tolist() == [5, 17, 30]
    assert prumerge_select(scores, None).tolist() == [5, 17, 30]
    assert prumerge_select(scores, 2).tolist() == [17, 30]  # cut to the budget by score
    filled = prumerge_select(scores, 8)
    assert filled.numel() == 8 and {5, 17, 30} <= set(filled.tolist())


def test_prumerge_merge_adds_weighted_neighbours_and_one_extra_token():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1], [0.1, 3.0], [0.2, 2.0]])
    w = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    out, rep = prumerge_merge(x, torch.tensor([0, 1]), w, x, neighbours=1)
    assert rep.tolist() == [0, 1, 4]  # the extra token sits at the last pruned token
    torch.testing.assert_close(out[0], x[0] + 0.3 * x[2])  # nearest to row 0: row 2, unnormalised
    torch.testing.assert_close(out[1], x[1] + 0.15 * x[3])
    torch.testing.assert_close(out[2], 0.3 * x[2] + 0.15 * x[3] + 0.25 * x[4])
    out, rep = prumerge_merge(x, torch.tensor([0, 1]), w, x, neighbours=2, extra_token=False)
    assert rep.tolist() == [0, 1]
    torch.testing.assert_close(out[1], x[1] + 0.15 * x[3] + 0.25 * x[4])


def test_visionzip_keeps_the_top_attended_tokens():
    # queries all point along key 6 and key 11, so those receive the most attention
    length, heads, dim = 16, 2, 4
    k = 0.01 * torch.randn(length, heads, dim, generator=torch.Generator().manual_seed(0))
    k[6, :, 0], k[11, :, 0] = 5.0, 3.0
    q = torch.zeros(length, heads, dim)
    q[..., 0] = 1.0
    scores = received_attention(q, k, torch.tensor([0, length]), scale=1.0)
    assert scores.topk(2).indices.tolist() == [6, 11]
    torch.testing.assert_close(scores.sum(), torch.tensor(1.0))
    x = torch.randn(length, 8)
    features, rep = visionzip_reduce(x, scores, k.mean(1), n_dominant=2, n_contextual=3)
    assert features.shape == (5, 8) and {6, 11} <= set(rep.tolist())
    torch.testing.assert_close(features[rep.tolist().index(6)], x[6])


def test_visionzip_contextual_token_is_its_target_plus_the_mean_of_the_others():
    x = torch.arange(6.0).view(6, 1)
    keys = torch.tensor([[1.0, 0], [1.0, 0.1], [0, 1.0], [0.1, 1.0], [1.0, 0.2], [9.0, 9.0]])
    scores = torch.tensor([0, 0, 0, 0, 0, 1.0])
    features, rep = visionzip_reduce(x, scores, keys, n_dominant=1, n_contextual=2)
    # rest = [0..4]; targets arange(0, 5, 5 // 2)[:2] = 0 and 2; 1 and 4 join 0, 3 joins 2
    assert rep.tolist() == [0, 2, 5]
    torch.testing.assert_close(features[:, 0], torch.tensor([0 + (1 + 4) / 2, 2 + 3 / 1, 5.0]))
    assert visionzip_split(64, 576) == (54, 10) and visionzip_split(16, 16) == (16, 0)


def test_keyframes_drop_exact_duplicates_first():
    frames = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    frames[3] = frames[1]
    frames[5] = frames[0]
    assert select_keyframes(frames, 4).tolist() == [0, 1, 2, 4]
    assert select_keyframes(frames, 6).tolist() == list(range(6))
    assert select_keyframes(frames, 1).tolist() == [0]


def test_frame_thumbnails_are_equal_for_equal_frames():
    rows = torch.randn(3 * 16, 3 * 2 * 14 * 14)
    rows[32:] = rows[:16]
    thumbs = frame_thumbnails(rows, (3, 4, 4), channels=3, thumb=2)
    assert thumbs.shape == (3, 12) and torch.equal(thumbs[0], thumbs[2]) and not torch.equal(thumbs[0], thumbs[1])


def test_adaptive_resolution_gives_a_flat_image_fewer_tokens():
    flat = torch.zeros(3, 224, 224)
    busy = torch.zeros(3, 224, 224)
    busy[:, ::8] = 1.0  # stripes: many edges
    assert edge_density(flat) == 0.0 and edge_density(busy) > 0.2
    low, high = choose_grid(edge_density(flat), (8, 8), 0.25), choose_grid(edge_density(busy), (8, 8), 0.25)
    assert low == (4, 4) and high == (8, 8)
    assert choose_grid(0.0, (8, 8), 1.0) == (8, 8)


def test_patch_layout_round_trip():
    image = torch.randn(3, 112, 84)
    rows = image_to_patches(image, patch=14, merge=2, temporal=2)
    assert rows.shape == (8 * 6, 3 * 2 * 14 * 14)
    assert torch.equal(patches_to_image(rows, (8, 6), channels=3, patch=14, merge=2), image)


def test_pooling_grid_and_positions():
    assert pooled_grid(8, 8, 0.25) == (4, 4) and pooled_grid(8, 8, 1.0) == (8, 8) and pooled_grid(3, 3, 0.01) == (1, 1)
    x = torch.randn(2 * 4 * 6, 5)
    pooled, rep = pool_tokens(x, (2, 4, 6), (2, 3))
    torch.testing.assert_close(pooled[0], x.view(2, 4, 6, 5)[0, :2, :2].mean((0, 1)))
    assert rep.tolist() == [0, 2, 4, 12, 14, 16, 24, 26, 28, 36, 38, 40]
    same, identity = pool_tokens(x, (2, 4, 6), (4, 6))
    assert torch.equal(same, x) and identity.tolist() == list(range(48))
