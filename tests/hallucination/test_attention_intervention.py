"""PAI-style attention amplification: strength 0 is bit-exact, more image attention otherwise."""

from __future__ import annotations

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.hallucination.attention_intervention import VisualAttentionAmplification, amplified_attention


def _inputs(model):
    inputs = tiny_inputs(model, grids=((4, 4),), batch_size=2, seed=5)
    inputs["attention_mask"][1, :3] = 0
    return inputs


def test_strength_zero_is_bit_exact():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    plain_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        plain_logits = model(**inputs).logits
    with VisualAttentionAmplification(alpha=0.0)(model):
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        with torch.no_grad():
            logits = model(**inputs).logits
    assert torch.equal(plain_ids, ids) and torch.equal(plain_logits, logits)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "_atlas_pai") for layer in model.model.language_model.layers)


def test_amplification_changes_only_the_last_row_and_raises_image_mass():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=generator) for _ in range(3))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    visual = torch.tensor([[False, True, True, False, False]] * 2)
    _, plain = amplified_attention(q, k, v, allowed, visual, 0.0, 8**-0.5)
    _, boosted = amplified_attention(q, k, v, allowed, visual, 1.0, 8**-0.5)
    assert torch.equal(plain[..., :-1, :], boosted[..., :-1, :])
    mass = lambda probs: probs[..., -1, :][..., visual[0]].sum(-1)
    assert (mass(boosted) > mass(plain)).all()
    reference = torch.softmax((q @ k.transpose(-1, -2) * 8**-0.5).masked_fill(~allowed, float("-inf")), -1)
    assert torch.allclose(plain, reference, atol=1e-6)


def test_amplification_changes_the_model_output_on_chosen_layers_only():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    with torch.no_grad():
        plain = model(**inputs).logits
        with VisualAttentionAmplification(alpha=2.0)(model):
            boosted = model(**inputs).logits
        with VisualAttentionAmplification(alpha=2.0, layers=())(model):
            untouched = model(**inputs).logits
    assert not torch.allclose(plain[:, -1], boosted[:, -1])
    assert torch.allclose(plain[:, :-1], boosted[:, :-1], atol=1e-5)  # earlier rows untouched
    assert torch.equal(plain, untouched)
