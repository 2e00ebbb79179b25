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
    >>> # rho, sweep = calibrate_rho(method, model, calibration_batches, steps)  # then method.unlearn(...)

Deviations / guesses (README section 3-5): the method section is not available to us, so
everything below the abstract is a reconstruction: EFUF's three-part objective with the SAM step
on the forget term only, weights 1/1/1, the retain terms unperturbed, eps from the global L2 norm
over the perturbed set, rho calibrated per model by :func:`calibrate_rho` (keep the perturbed
hallucination probability below 0.9), clone-restore of the weights.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn

from reference_impls.registry import register

from ..base import UnlearningMethod
from ..terms import Term, ga_term, npo_term
from ..trainer import ADVERSARIAL_LOSS, SAMConfig

__all__ = ["SARE", "SAMConfig", "calibrate_rho", "saturated_steps"]


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


def saturated_steps(history: Sequence[dict[str, float]], saturation: float = 0.9) -> int:
    """Steps at which the perturbation lifted the target probability from below ``saturation`` to above it.

    At such a step ``eps`` has already relearned the hallucination, so the forget gradient taken at
    ``theta + eps`` is close to zero: the step does not unlearn (README section 5).
    """
    return sum(1 for row in history if row.get("clean_p_target", 1.0) < saturation < row.get("adv_p_target", 0.0))


def calibrate_rho(
    method: SARE,
    model: nn.Module,
    batches: Callable[[int], dict[str, dict]],
    steps: int,
    rhos: Sequence[float] = (0.01, 0.03, 0.1, 0.3),
    saturation: float = 0.9,
) -> tuple[float, list[dict[str, float]]]:
    """Largest rho whose own SARE run, from ``model``, never saturates the perturbed target probability.

    For each rho (largest first) a copy of ``model`` is unlearned with ``method`` for ``steps``
    steps on ``batches`` (calibration data, disjoint from what is reported), exactly as the run
    that will be reported trains. A rho is accepted when no step saturates
    (:func:`saturated_steps`) and the perturbation raised the forget loss on average. The
    trajectory matters: at the start the hallucinated word is already likely at ``theta`` itself,
    so a one-step check there accepts every radius, and the saturation appears only once
    unlearning has lowered ``p_target`` (README section 5). ``model`` is not changed.

    Returns:
        ``(rho, sweep)`` with one row per rho tried: saturated steps, the largest perturbed
        target probability, the mean loss increase. When no rho qualifies the smallest is returned.
    """
    sweep, best = [], min(rhos)
    for rho in sorted(rhos, reverse=True):
        probe = copy.deepcopy(model)
        trainer = replace(method, sam=replace(method.sam, rho=rho)).trainer(probe)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # saturation is what the sweep measures
            history = trainer.fit(batches, steps)
        deltas = [row[f"adv_{ADVERSARIAL_LOSS}"] - row[f"clean_{ADVERSARIAL_LOSS}"] for row in history]
        row = {
            "rho": rho,
            "saturated_steps": saturated_steps(history, saturation),
            "steps": steps,
            "max_p_target_adv": max(r.get("adv_p_target", float("nan")) for r in history),
            "mean_delta_loss": sum(deltas) / len(deltas),
        }
        sweep.append(row)
        if row["saturated_steps"] == 0 and row["mean_delta_loss"] > 0:
            best = rho
            break
    return best, sweep
