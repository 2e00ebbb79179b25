"""Steering vector: strength 0 is bit-exact, the direction is the mean paired difference."""

from __future__ import annotations

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.hallucination.representation_steering import SteeringVector, layer_states, mean_difference


def test_strength_zero_is_bit_exact():
    model = tiny_qwen25vl(seed=4)
    inputs = tiny_inputs(model, grids=((4, 4),), batch_size=2, seed=6)
    plain_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    steer = SteeringVector(layer=1, strength=0.0, vector=torch.randn(32) * 10)
    with steer(model):
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(plain_ids, ids)
    with torch.no_grad(), SteeringVector(layer=1, strength=3.0, vector=torch.randn(32))(model):
        steered = model(**inputs).logits
    with torch.no_grad():
        assert not torch.allclose(steered, model(**inputs).logits)  # hook removed again, and it did act


def test_mean_difference_by_hand():
    pos = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])  # one pair, T=3
    neg = torch.tensor([[[0.0, 1.0], [5.0, 5.0]]])
    vector = mean_difference(pos, torch.tensor([[1, 1, 0]]), neg, torch.tensor([[1, 0]]))
    assert torch.allclose(vector, torch.tensor([2.0 - 0.0, 1.0 - 1.0]))


def test_fit_uses_the_chosen_layer():
    model = tiny_qwen25vl(seed=4)
    a = {**tiny_inputs(model, grids=((4, 4),), seed=1)}
    b = {**tiny_inputs(model, grids=((4, 4),), seed=2)}
    a["mask"], b["mask"] = torch.ones_like(a["input_ids"]), torch.ones_like(b["input_ids"])
    steer = SteeringVector(layer=2).fit(model, a, b)
    expected = layer_states(model, a, 2).mean(1)[0] - layer_states(model, b, 2).mean(1)[0]
    assert torch.allclose(steer.vector, expected, atol=1e-6)
