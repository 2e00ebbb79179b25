"""Objective terms for :class:`~reference_impls.hallucination.trainer.UnlearningTrainer`.

A :class:`Term` names the batch it reads (``"forget"``, ``"grounded"``, ``"retain"``, or any key
a caller chooses), a weight (a number or a schedule ``step -> weight``), whether the trainer's
sharpness-aware perturbation targets it (``adversarial``), and a loss callable
``loss(trainer, batch) -> (scalar, stats)``. Calling back into the trainer gives a loss access
to :meth:`~UnlearningTrainer.logits` and the frozen reference's
:meth:`~UnlearningTrainer.reference_logits`, which is all DPO-style or KL terms need.

A batch is a dict of model inputs (``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
``pixel_values``, ``image_grid_thw``) plus ``labels`` (B, T) and ``mask`` (B, T) (see
:mod:`~reference_impls.hallucination.unlearning_losses` for the alignment) and, for EFUF's
score-weighted terms, ``scores`` (B,): each sample's CLIP-like image-text score.

Examples:
    >>> terms = [npo_term(beta=0.5), nll_term("grounded"), nll_term("retain")]
    >>> [t.name for t in terms]
    ['forget_npo', 'grounded_nll', 'retain_nll']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .unlearning_losses import (
    efuf_weights,
    ga_loss,
    kl_to_reference,
    mean_nll,
    npo_loss,
    sequence_logprob,
    token_logprobs,
    weighted_ga_loss,
    weighted_nll,
)

if TYPE_CHECKING:
    from .trainer import UnlearningTrainer

__all__ = [
    "Term",
    "LossFn",
    "nll_term",
    "scored_nll_term",
    "ga_term",
    "npo_term",
    "efuf_term",
    "kl_term",
    "target_probability",
]

LossFn = Callable[["UnlearningTrainer", dict], "tuple[torch.Tensor, dict[str, float]]"]
Weight = float | Callable[[int], float]


@dataclass
class Term:
    """One weighted loss term of a training objective."""

    name: str
    """Label of the term's value in the trainer's stats (``"forget_npo"``, ``"retain_nll"``, ...)."""
    batch: str
    """Key of the batch the term reads in the dict passed to ``UnlearningTrainer.step``."""
    loss: LossFn
    """``loss(trainer, batch) -> (scalar, extra stats)``."""
    weight: Weight = 1.0
    """A number, or a schedule ``step -> weight``."""
    adversarial: bool = False
    """Whether the sharpness-aware step evaluates this term at the perturbed weights. The trainer
    finds the forget term through this flag only (never through its name): ``eps`` comes from the
    adversarial terms' gradient, and their summed loss is the stat ``ADVERSARIAL_LOSS``."""
    needs_reference: bool = False
    """Whether the loss reads the frozen reference model (NPO, KL, DPO); the trainer then keeps one."""

    def weight_at(self, step: int) -> float:
        return float(self.weight(step)) if callable(self.weight) else float(self.weight)


def target_probability(logits: torch.Tensor, batch: dict) -> float:
    """Mean probability the model gives the masked target tokens (``p_hal`` for a forget batch)."""
    logp = token_logprobs(logits.detach(), batch["labels"], batch["mask"])
    keep = batch["mask"][:, 1:].bool()
    return float(logp.exp()[keep].mean()) if keep.any() else float("nan")


def nll_term(batch: str = "retain", weight: Weight = 1.0) -> Term:
    """Token-mean NLL on the masked tokens (retain, grounded or relearning data)."""

    def loss(trainer: UnlearningTrainer, data: dict):
        value = mean_nll(trainer.logits(data), data["labels"], data["mask"])
        return value, {}

    return Term(f"{batch}_nll", batch, loss, weight)


def ga_term(batch: str = "forget", weight: Weight = 1.0, adversarial: bool = True) -> Term:
    """Gradient ascent on the masked (hallucinated) tokens."""

    def loss(trainer: UnlearningTrainer, data: dict):
        logits = trainer.logits(data)
        return ga_loss(logits, data["labels"], data["mask"]), {"p_target": target_probability(logits, data)}

    return Term("forget_ga", batch, loss, weight, adversarial)


def npo_term(beta: float = 0.5, batch: str = "forget", weight: Weight = 1.0, adversarial: bool = True) -> Term:
    """NPO against the trainer's frozen reference model."""

    def loss(trainer: UnlearningTrainer, data: dict):
        logits = trainer.logits(data)
        ref = trainer.reference_seq_logprob(data)  # (B,)
        value = npo_loss(sequence_logprob(logits, data["labels"], data["mask"]), ref, beta)
        return value, {"p_target": target_probability(logits, data)}

    return Term("forget_npo", batch, loss, weight, adversarial, needs_reference=True)


def _scores(data: dict, term: str) -> torch.Tensor:
    if "scores" not in data:
        raise ValueError(f"{term} weights each sample by its image-text score: the batch needs a 'scores' entry (B,)")
    return data["scores"]


def scored_nll_term(batch: str = "grounded", weight: Weight = 1.0) -> Term:
    """NLL with each sample weighted by its score, ``mean_i score_i nll_i`` (EFUF's positive terms)."""

    def loss(trainer: UnlearningTrainer, data: dict):
        scores = _scores(data, f"{batch}_nll")
        return weighted_nll(trainer.logits(data), data["labels"], data["mask"], scores), {}

    return Term(f"{batch}_nll", batch, loss, weight)


def efuf_term(
    batch: str = "forget",
    weight: Weight = 1.0,
    adversarial: bool = True,
    t_hal: float = 23.0,
    t_norm: float = 32.0,
    normalise: bool = False,
) -> Term:
    """EFUF's score-weighted GA, ``-mean_i (t_hal + t_norm - score_i) nll_i``.

    ``normalise=True`` divides the weights by their batch mean (see
    :func:`~reference_impls.hallucination.unlearning_losses.efuf_weights`).
    """

    def loss(trainer: UnlearningTrainer, data: dict):
        weights = efuf_weights(_scores(data, "forget_efuf"), t_hal, t_norm, normalise)
        logits = trainer.logits(data)
        return weighted_ga_loss(logits, data["labels"], data["mask"], weights), {
            "p_target": target_probability(logits, data)
        }

    return Term("forget_efuf", batch, loss, weight, adversarial)


def kl_term(batch: str = "retain", weight: Weight = 1.0) -> Term:
    """KL(reference || model) on the masked positions of a retain batch."""

    def loss(trainer: UnlearningTrainer, data: dict):
        return kl_to_reference(trainer.logits(data), trainer.reference_logits(data), data["mask"]), {}

    return Term(f"{batch}_kl", batch, loss, weight, needs_reference=True)
