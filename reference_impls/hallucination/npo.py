"""Negative preference optimisation (NPO) with retain terms.

Idea: treat the forget sample as a dispreferred response in a DPO-like loss with no preferred
one, ``L = -(2/beta) log sigmoid(-beta log(p_theta / p_ref))`` summed over the forget span
against a frozen copy of the model before unlearning. Its gradient is gradient ascent's times a
weight ``2 sigmoid(beta r)`` that shrinks as the sample is forgotten, so NPO slows down by itself
instead of diverging like GA.

Paper: standard unlearning loss (Zhang et al. 2024), the forget term used by SARE
(arXiv 2601.16527) and sharpness-aware unlearning (arXiv 2502.05374).

Examples:
    >>> from reference_impls.hallucination.npo import NPO
    >>> method = NPO(beta=0.5, lr=5e-4)
    >>> # method.unlearn(model, batches)

Deviations / guesses: beta 0.5 and lr 5e-4 for the tiny model (public-code default beta 0.1 for
7B models); the reference is a deep copy, or the base weights with adapters disabled under LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.registry import register

from .base import UnlearningMethod
from .terms import Term, npo_term

__all__ = ["NPO"]


@register("npo", family="hallucination-unlearning", kind="unlearning")
@dataclass
class NPO(UnlearningMethod):
    beta: float = 0.5

    def forget_term(self) -> Term:
        return npo_term(self.beta, weight=self.weight_forget)
