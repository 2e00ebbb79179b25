"""The shared reconstruction scorer: grouping invariance, smoothing, image-score options."""

import torch

from reference_impls.continual_ad.scorer import DiffusionScorer, gaussian_blur


def test_scores_do_not_depend_on_batching(procad_data, tiny_unet, schedule):
    images = procad_data["dots"].test
    scorer = DiffusionScorer(ddim_steps=2, n_seeds=2, batch=3)
    maps, scores = scorer(tiny_unet, images, schedule)
    sub_maps, sub_scores = scorer(tiny_unet, images[[5, 1]], schedule)
    assert torch.allclose(sub_maps, maps[[5, 1]], atol=1e-6) and torch.allclose(sub_scores, scores[[5, 1]], atol=1e-6)
    assert torch.allclose(scores, maps.flatten(1).max(1).values)
    topk = DiffusionScorer(ddim_steps=2, n_seeds=2, image_score="topk", topk_frac=0.05)(tiny_unet, images, schedule)[1]
    assert (topk <= scores + 1e-7).all() and (topk < scores).any()


def test_gaussian_blur_keeps_constants_and_spreads_peaks():
    const = torch.full((2, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(const, 1.0), const, atol=1e-6)
    peak = torch.zeros(1, 9, 9)
    peak[0, 4, 4] = 1.0
    out = gaussian_blur(peak, 1.0)
    assert out[0, 4, 4] < 1.0 and out[0, 4, 5] > 0 and abs(float(out.sum()) - 1.0) < 1e-5


def test_feature_term_adds_a_nonnegative_distance(procad_data, tiny_unet, schedule):
    images = procad_data["checker"].test[:3]
    plain, _ = DiffusionScorer(ddim_steps=2, n_seeds=1, sigma=1.0)(tiny_unet, images, schedule)
    feats, _ = DiffusionScorer(ddim_steps=2, n_seeds=1, sigma=1.0, lambda_f=0.5)(tiny_unet, images, schedule)
    assert (feats >= plain - 1e-6).all() and (feats > plain + 1e-6).any()
