"""Visual contrastive decoding: alpha=0 is greedy, the plausibility cut-off, the cached second stream."""

from __future__ import annotations

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.hallucination.contrastive_decoding import (
    VisualContrastiveDecoding,
    contrast_logits,
    distort_pixels,
    plausibility_mask,
)


def _inputs(model, padded: bool = True):
    inputs = tiny_inputs(model, grids=((4, 4),), batch_size=2, seed=3)
    if padded:  # left padding on the second row
        inputs["attention_mask"][1, :2] = 0
    return inputs


def test_alpha_zero_equals_plain_greedy():
    model = tiny_qwen25vl(seed=1)
    inputs = _inputs(model)
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    for mode in ("noise", "mask"):
        with VisualContrastiveDecoding(alpha=0.0, beta=0.1, mode=mode)(model):
            contrastive = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert torch.equal(plain, contrastive)
    assert "forward" not in model.__dict__ and "get_image_features" not in model.model.__dict__


def test_cut_off_never_selects_an_implausible_token():
    generator = torch.Generator().manual_seed(0)
    for beta in (0.01, 0.1, 0.5, 0.9):
        clean = torch.randn(64, 50, generator=generator) * 3
        # distorted logits that strongly favour the clean model's *least* likely tokens
        distorted = -clean * 5
        scores = contrast_logits(clean, distorted, alpha=3.0, beta=beta)
        chosen = scores.argmax(-1)  # (64,)
        p = clean.softmax(-1)
        assert (p.gather(-1, chosen[:, None]).squeeze(-1) >= beta * p.max(-1).values - 1e-6).all()
        assert torch.equal(torch.isfinite(scores), plausibility_mask(clean, beta))


def test_contrast_formula_inside_the_plausible_set():
    clean, distorted = torch.tensor([[2.0, 1.9, -5.0]]), torch.tensor([[3.0, 0.0, 0.0]])
    scores = contrast_logits(clean, distorted, alpha=1.0, beta=0.5)
    assert torch.allclose(scores[0, :2], torch.tensor([1.0, 3.8]))
    assert scores[0, 2] == float("-inf")
    assert scores.argmax() == 1  # the contrast flips the choice between two plausible tokens


def test_cached_contrastive_generation_matches_a_no_cache_loop():
    model = tiny_qwen25vl(seed=7)  # a seed whose contrastive tokens are ordinary text ids
    inputs = _inputs(model, padded=False)
    method = VisualContrastiveDecoding(alpha=1.5, beta=0.05, mode="noise", noise_step=700)
    with method(model):
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    distorted_pixels = distort_pixels(inputs["pixel_values"], "noise", 700, seed=method.seed)
    current = dict(inputs)
    for _ in range(4):
        with torch.no_grad():
            clean = model(**current, use_cache=False).logits[:, -1]
            distorted = model(**{**current, "pixel_values": distorted_pixels}, use_cache=False).logits[:, -1]
        token = contrast_logits(clean, distorted, method.alpha, method.beta).argmax(-1, keepdim=True)  # (B, 1)
        current = {
            **current,
            "input_ids": torch.cat([current["input_ids"], token], 1),
            "attention_mask": torch.cat([current["attention_mask"], torch.ones_like(token)], 1),
            "mm_token_type_ids": torch.cat([current["mm_token_type_ids"], torch.zeros_like(token)], 1),
        }
    assert torch.equal(generated, current["input_ids"])
    assert not torch.equal(generated, model.generate(**inputs, max_new_tokens=4, do_sample=False))  # the contrast acted


def test_distortions_change_the_image_and_are_deterministic():
    pixels = torch.randn(16, 12)
    for mode in ("noise", "mask"):
        a, b = distort_pixels(pixels, mode, seed=4), distort_pixels(pixels, mode, seed=4)
        assert torch.equal(a, b) and not torch.equal(a, pixels)
    assert (distort_pixels(pixels, "mask", mask_ratio=1.0) == 0).all()
