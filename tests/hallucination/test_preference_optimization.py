"""DPO: the loss by hand, log 2 with a non-zero gradient at the reference point."""

from __future__ import annotations

import math

import torch

from reference_impls.hallucination.preference_optimization import HallucinationDPO, dpo_loss

from .conftest import make_batch


def test_dpo_loss_matches_a_hand_computation():
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    # margins: (0.5 - (-1.0)) = 1.5 and (0.0 - 1.0) = -1.0; beta 0.5
    expected = -(math.log(1 / (1 + math.exp(-0.75))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert math.isclose(float(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.5)), expected, rel_tol=1e-6)


def test_at_the_reference_the_loss_is_log2_and_the_gradient_is_not_zero(model):
    batches = {
        "preference": {
            "chosen": make_batch(model, seed=10, span=(-4, 0)),
            "rejected": make_batch(model, seed=20, span=(-4, 0)),
        }
    }
    trainer = HallucinationDPO(beta=0.5, weight_chosen_nll=0.0, weight_retain=0.0).trainer(model)
    grads, stats = trainer.gradients(batches)
    assert math.isclose(stats["dpo"], math.log(2), rel_tol=1e-6)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    assert norm > 1e-6


def test_training_raises_the_chosen_over_the_rejected(model):
    pair = {"chosen": make_batch(model, seed=10, span=(-4, 0)), "rejected": make_batch(model, seed=20, span=(-4, 0))}
    method = HallucinationDPO(beta=0.5, lr=1e-2, weight_chosen_nll=0.0, weight_retain=0.0)
    history = method.train(model, lambda step: {"preference": pair}, steps=5)
    assert history[-1]["dpo"] < history[0]["dpo"] and history[-1]["margin"] > history[0]["margin"]
