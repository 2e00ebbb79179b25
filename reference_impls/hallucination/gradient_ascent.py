"""Gradient ascent (GA) with retain terms -- the simplest unlearning baseline.

Idea: raise the negative log-likelihood of the forget tokens (here, the hallucinated object
word in a caption) while ordinary NLL on grounded tokens and clean captions holds the rest of
the model in place. GA is unbounded: once the forget tokens are improbable it keeps pushing, so
caption quality collapses with a large learning rate or long training; always read it next to a
utility metric.

Paper: standard baseline (named as "GA" by SARE, arXiv 2601.16527, and by EFUF, arXiv 2402.09801).
Upstream: licong-lin/negative-preference-optimization TOFU/dataloader.py
(``CustomTrainerForgetting.compute_loss``, ``loss_type == "grad_ascent"``) @
9e5f646b09bb5f1a6eed16085220ed1c3affa42d: minus the token-mean cross-entropy over the labelled
tokens of the forget batch, as :func:`~.unlearning_losses.ga_loss`.

Examples:
    >>> from reference_impls.hallucination.gradient_ascent import GradientAscent
    >>> method = GradientAscent(lr=1e-4, steps=60)
    >>> # method.unlearn(model, batches)  # batches(step) -> {"forget", "grounded", "retain"}

Deviations / guesses: the labelled tokens are the hallucinated span only (token targeting)
instead of the whole answer; the retain NLL terms are upstream's ``grad_diff`` variant, not plain
``grad_ascent``; lr 1e-4 for the tiny model is ours (``reference_impls/hallucination/sare/README.md`` §5).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.registry import register

from .base import UnlearningMethod
from .terms import Term, ga_term

__all__ = ["GradientAscent"]


@register("ga", family="hallucination-unlearning", kind="unlearning")
@dataclass
class GradientAscent(UnlearningMethod):
    lr: float = 1e-4

    def forget_term(self) -> Term:
        return ga_term(weight=self.weight_forget)
