"""The interface every ``kind="unlearning"`` method implements (see the package docstring).

An unlearning method is a ``@dataclass`` subclass of :class:`UnlearningMethod`: it says which
forget term it uses (:meth:`forget_term`), optionally a SAM perturbation (:meth:`sam_config`), and
inherits the shared retain terms (grounded-token NLL, whole-caption NLL, optional KL to the
reference) and :meth:`unlearn`, which builds one
:class:`~reference_impls.hallucination.trainer.UnlearningTrainer` and runs it in place.

Examples:
    >>> from reference_impls.hallucination.npo import NPO
    >>> [t.name for t in NPO().terms()]
    ['forget_npo', 'grounded_nll', 'retain_nll']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .terms import Term, kl_term, nll_term
from .trainer import SAMConfig, TrainerConfig, UnlearningTrainer

__all__ = ["UnlearningMethod"]


@dataclass
class UnlearningMethod:
    """Shared hyper-parameters: optimiser, length and the retain-term weights."""

    lr: float = 5e-4
    """AdamW learning rate."""
    steps: int = 60
    """Optimiser steps of :meth:`unlearn` (one batch dict per step)."""
    weight_forget: float = 1.0
    """Weight of the forget term (lambda_neg)."""
    weight_grounded: float = 1.0
    """Weight of the NLL on the grounded tokens before the hallucination (lambda_pos; 0 drops the term)."""
    weight_retain: float = 1.0
    """Weight of the NLL on whole clean captions (lambda_sent; 0 drops the term)."""
    weight_kl: float = 0.0
    """Weight of KL(reference || model) on the retain batch (0: off)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_clip: float | None = None
    """Global-norm gradient clipping (None: off)."""

    def forget_term(self) -> Term:
        """The term that lowers the hallucinated tokens' likelihood (flagged ``adversarial``)."""
        raise NotImplementedError

    def retain_terms(self) -> list[Term]:
        terms = []
        if self.weight_grounded:
            terms.append(nll_term("grounded", self.weight_grounded))
        if self.weight_retain:
            terms.append(nll_term("retain", self.weight_retain))
        if self.weight_kl:
            terms.append(kl_term("retain", self.weight_kl))
        return terms

    def terms(self) -> list[Term]:
        return [self.forget_term()] + self.retain_terms()

    def sam_config(self) -> SAMConfig | None:
        """The sharpness-aware perturbation of the forget term (None: plain descent)."""
        return None

    def trainer(self, model: nn.Module, reference: nn.Module | None = None) -> UnlearningTrainer:
        """The trainer this method runs (not yet stepped)."""
        config = TrainerConfig(
            lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip, sam=self.sam_config()
        )
        return UnlearningTrainer(model, self.terms(), config, reference)

    def unlearn(
        self,
        model: nn.Module,
        batches: Callable[[int], dict[str, dict]],
        steps: int | None = None,
        reference: nn.Module | None = None,
    ) -> list[dict[str, float]]:
        """Unlearn in place. ``batches(step)`` gives ``{"forget", "grounded", "retain"}`` batches.

        Returns:
            The per-step statistics.
        """
        return self.trainer(model, reference).fit(batches, self.steps if steps is None else steps)
