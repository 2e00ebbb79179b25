"""SARE: sharpness-aware robust erasure of hallucinations (reference implementation of the
described method).

Idea: unlearning that only lowers the hallucination loss at one point of weight space relapses
as soon as a few relearning steps move the weights. SARE solves a min-max instead: minimise the
*worst* forget loss within a ball of radius rho around the weights (targeted SAM), while the
grounded and sentence retain terms are taken at the clean weights. To first order the inner
maximiser is one normalised relearning step on the hallucinated tokens,
``eps = rho g / ||g||`` with ``g`` the forget-loss gradient, so the update learns to keep the
hallucination suppressed after that simulated attack. The forget term is NPO (default) or GA.

Paper: arXiv 2601.16527 ("Beyond Superficial Unlearning: Sharpness-Aware Robust Erasure of
Hallucinations in Multimodal LLMs"). Building blocks: EFUF (arXiv 2402.09801), sharpness-aware
unlearning (arXiv 2502.05374).

Upstream: none public (the paper has no code; only its abstract and introduction were available
to us). The full design, what is known and every choice we made with its reason, is in this
package's ``README.md``.

Examples:
    >>> from reference_impls.hallucination.sare import SARE, SAMConfig
    >>> method = SARE(forget="npo", beta=0.5, sam=SAMConfig(rho=0.05))
    >>> method.sam_config().rho
    0.05
    >>> [(t.name, t.adversarial) for t in method.terms()]
    [('forget_npo', True), ('grounded_nll', False), ('retain_nll', False)]
    >>> # method.unlearn(model, batches); calibrate_rho(...) first on a held-out forget batch

Deviations / guesses (README section 3-5): the method section is not available to us, so
everything below the abstract is a reconstruction: EFUF's three-part objective with the SAM step
on the forget term only, weights 1/1/1, the retain terms unperturbed, eps from the global L2 norm
over the perturbed set, rho calibrated per model by :func:`calibrate_rho` (keep the perturbed
hallucination probability below 0.9), clone-restore of the weights.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

from torch import nn

from reference_impls.registry import register

from ..base import UnlearningMethod
from ..terms import Term, ga_term, npo_term
from ..trainer import ADVERSARIAL_LOSS, SAMConfig

__all__ = ["SARE", "SAMConfig", "calibrate_rho"]


@register("sare", family="hallucination-unlearning", kind="unlearning")
@dataclass
class SARE(UnlearningMethod):
    """NPO (or GA) + grounded NLL + sentence NLL, with the targeted SAM step on the forget term.

    The optimiser, length and retain weights are the fields of
    :class:`~reference_impls.hallucination.base.UnlearningMethod`; SARE adds:
    """

    forget: Literal["npo", "ga"] = "npo"
    """Forget term: ``"npo"`` (default, bounded, slows down as the sample is forgotten) or ``"ga"``
    (token-mean gradient ascent, unbounded). README section 3."""
    beta: float = 0.5
    """NPO temperature (only read when ``forget="npo"``). 0.5 for the tiny models; public NPO code
    uses 0.1 for 7B models. README section 5."""
    sam: SAMConfig = field(default_factory=SAMConfig)
    """The sharpness-aware perturbation (radius ``rho``, targeted ``scope``, parameter filter,
    saliency, ASAM, restore mode, calibration warnings); see
    :class:`~reference_impls.hallucination.trainer.SAMConfig`. ``sam.scope="all"`` is the
    untargeted (vanilla SAM) control; ``sam.rho=0`` is NPO/GA + retain exactly."""

    def forget_term(self) -> Term:
        if self.forget == "npo":
            return npo_term(self.beta, weight=self.weight_forget)
        if self.forget == "ga":
            return ga_term(weight=self.weight_forget)
        raise ValueError(f"unknown forget term {self.forget!r}")

    def sam_config(self) -> SAMConfig:
        return self.sam


def calibrate_rho(method: SARE, model: nn.Module, batches: dict[str, dict],
                  rhos: Sequence[float] = (0.01, 0.03, 0.1, 0.3),
                  saturation: float = 0.9) -> tuple[float, list[dict[str, float]]]:
    """Largest rho whose perturbation keeps the forget batch's target probability below ``saturation``.

    Runs one lr-0 step per rho on a copy of ``model`` (weights unchanged) and reads the
    perturbed target probability and the loss increase ``L_f(theta+eps) - L_f(theta)`` of the
    adversarial terms (README section 5, "rho calibration").

    Returns:
        ``(rho, sweep)`` with one stats row per rho.
    """
    sweep, best = [], min(rhos)
    for rho in sorted(rhos):
        probe = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # saturation is what the sweep measures
            stats = replace(method, sam=replace(method.sam, rho=rho), lr=0.0).trainer(probe).step(batches)
        delta = stats[f"adv_{ADVERSARIAL_LOSS}"] - stats[f"clean_{ADVERSARIAL_LOSS}"]
        row = {"rho": rho, "p_target": stats.get("clean_p_target", float("nan")),
               "p_target_adv": stats.get("adv_p_target", float("nan")), "delta_loss": delta}
        sweep.append(row)
        if row["p_target_adv"] < saturation and row["delta_loss"] > 0:
            best = rho
    return best, sweep
