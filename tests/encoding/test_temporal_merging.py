"""Temporal pooling and merging: pure functions against brute force, and the model-level contract."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

from reference_impls.common.scenes import SceneSpec, make_scene, repeat_images
from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.common.visual_tokens import keep_count
from reference_impls.encoding import temporal_merging
from reference_impls.encoding.temporal_merging import TemporalMerging, temporal_merge, temporal_pool
from tests.encoding.test_methods import run_recording, video_inputs


def naive_merge(x: torch.Tensor, keep: int, reduce: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The specification, literally: merge the most similar pair of adjacent runs anywhere in the
    clip (ties: earliest frame, then position), one pair at a time, in float64."""
    t, n, _ = x.shape
    runs = [[[f] for f in range(t)] for _ in range(n)]

    def token(p: int, run: list[int]) -> torch.Tensor:
        frames = torch.stack([x[f, p].double() for f in run])
        return frames.mean(0) if reduce == "mean" else frames[0]

    while sum(map(len, runs)) > keep:
        best = None
        for p in range(n):
            for i in range(1, len(runs[p])):
                sim = float(F.cosine_similarity(token(p, runs[p][i]), token(p, runs[p][i - 1]), dim=0))
                key = (sim, -runs[p][i][0], -p)
                if best is None or key > best[0]:
                    best = (key, p, i)
        _, p, i = best
        runs[p][i - 1] += runs[p].pop(i)
    out = sorted((run[0] * n + p, token(p, run), len(run)) for p in range(n) for run in runs[p])
    return (
        torch.stack([o[1] for o in out]).float(),
        torch.tensor([float(o[2]) for o in out]),
        torch.tensor([o[0] for o in out]),
    )


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_qwen25vl()


def test_pool_is_the_mean_over_groups_of_frames():
    x = torch.randn(7, 5, 6)
    pooled, rep = temporal_pool(x, window=3)  # groups {0,1,2}, {3,4,5}, {6}
    expected = torch.cat([x[0:3].mean(0), x[3:6].mean(0), x[6:7].mean(0)])
    torch.testing.assert_close(pooled, expected)
    assert rep.tolist() == [f * 5 + p for f in (0, 3, 6) for p in range(5)]  # each group's first frame


@pytest.mark.parametrize("reduce", ["mean", "drop"])
def test_merge_matches_the_brute_force_greedy_and_keeps_the_budget(reduce):
    generator = torch.Generator().manual_seed(0)
    for t, n in ((1, 3), (2, 2), (4, 3), (5, 2)):
        x = torch.randn(t, n, 4, generator=generator) + torch.randn(1, n, 4, generator=generator)  # frames alike
        for keep in range(n, t * n + 1):
            merged, size, rep = temporal_merge(x, keep, reduce)
            want, want_size, want_rep = naive_merge(x, keep, reduce)
            assert merged.shape == (keep, 4) and rep.numel() == keep
            assert torch.equal(rep, want_rep) and torch.equal(size, want_size)
            assert int(size.sum()) == t * n
            torch.testing.assert_close(merged, want)
    with pytest.raises(ValueError):
        temporal_merge(torch.randn(3, 4, 2), keep=3)  # below one token per position


def test_identical_frames_collapse_first():
    x = torch.randn(6, 10, 8)
    x[3] = x[2]
    x[5] = x[4]
    merged, size, rep = temporal_merge(x, keep=40)  # exactly the 20 duplicate tokens go
    frames = (rep // 10).unique().tolist()
    assert frames == [0, 1, 2, 4] and size.tolist() == [1.0] * 20 + [2.0] * 20
    torch.testing.assert_close(merged, x[[0, 1, 2, 4]].reshape(40, 8))


def test_static_background_collapses_while_a_changing_cell_survives():
    x = torch.randn(1, 9, 8).expand(8, -1, -1).clone() + 0.01 * torch.randn(8, 9, 8)
    x[4:, 5] = torch.randn(8)  # cell 5 changes at frame 4
    _, size, rep = temporal_merge(x, keep=10)
    assert sorted(rep.tolist()) == list(range(9)) + [4 * 9 + 5] and int(size.sum()) == 72


@pytest.mark.parametrize("mode", ["merge", "pool"])
def test_budget_one_is_bit_exact_for_an_image_clip_and_a_video(model, mode):
    for inputs in (tiny_inputs(model, grids=((4, 4),) * 4), video_inputs(t=4, duplicates=((3, 1),))):
        with torch.no_grad():
            reference = model(**inputs).logits
            method = TemporalMerging(budget=1.0, mode=mode)
            with method(model):
                logits = model(**inputs).logits
        assert torch.equal(logits, reference)
        assert method.stats["visual_kept"] == method.stats["visual_in"]


@pytest.mark.parametrize("mode,reduce", [("merge", "mean"), ("merge", "drop"), ("pool", "mean")])
def test_image_clip_counts_positions_and_features(model, mode, reduce):
    inputs = tiny_inputs(
        model, grids=((8, 8),) * 4 + ((4, 8),)
    )  # a clip of 4 frames (16 tokens each), then a lone image
    inputs["pixel_values"][64:128] = inputs["pixel_values"][0:64]  # frame 1 repeats frame 0
    method = TemporalMerging(budget=0.5, mode=mode, reduce=reduce)
    _, position_ids, ctx, selection = run_recording(model, method, inputs)
    keep, features = selection.keep[0], ctx.features(0)
    text = (~ctx.visual_mask[0]).nonzero().flatten()
    kept = torch.cat([text, ctx.visual_positions(0)[keep]]).sort().values
    assert torch.equal(
        position_ids[:, 0], ctx.position_ids[:, 0, kept]
    )  # each token at its earliest frame's 3-D position
    clip = keep[keep < 64]
    assert keep[keep >= 64].tolist() == list(range(64, 72))  # the lone image (8 tokens) is kept whole
    frames = features[:64].reshape(4, 16, -1)
    if mode == "pool":  # window 2: frames (0, 1) and (2, 3), at frames 0 and 2
        assert clip.tolist() == [*range(16), *range(32, 48)]
        torch.testing.assert_close(selection.embeds[0][:32], frames.reshape(2, 2, 16, -1).mean(1).reshape(32, -1))
    else:
        assert clip.numel() == keep_count(64, 0.5)
        assert not any(16 <= i < 32 for i in clip.tolist())  # the repeated frame merged away first
        expected, _, rep = temporal_merge(frames, keep_count(64, 0.5), reduce)
        assert torch.equal(clip, rep)
        torch.testing.assert_close(selection.embeds[0][:32], expected)


def test_video_item_merges_its_duplicate_slice_first(model):
    inputs = video_inputs(t=4, duplicates=((3, 2),))  # 16 merged tokens per slice
    method = TemporalMerging(budget=0.75)
    logits, position_ids, ctx, selection = run_recording(model, method, inputs)
    assert selection.keep[0].tolist() == list(range(48))  # slice 3 joined slice 2
    assert method.stats == {"visual_in": 64, "visual_kept": 48}
    torch.testing.assert_close(selection.embeds[0], ctx.features(0)[:48])


def test_repeat_images_makes_noisy_consecutive_copies():
    scene = make_scene(SceneSpec(n_images=2, image_size=56), seed=3)
    clip = repeat_images(scene, 3, seed=1)
    assert len(clip.images) == 6 and all(o.image in (0, 3) for o in clip.objects)
    copies = [c.astype(int) - scene.images[0].astype(int) for c in clip.images[:3]]
    assert all(0 < abs(d).mean() < 8 for d in copies) and not (copies[0] == copies[1]).all()


def test_paper_card_examples_run():
    assert "Deviations / guesses:" in temporal_merging.__doc__ and "arXiv 2409.01156" in temporal_merging.__doc__
    result = doctest.testmod(temporal_merging, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
