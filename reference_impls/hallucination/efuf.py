"""EFUF-style fine-grained unlearning: score-weighted GA with EFUF's weight schedules.

Idea (EFUF): split captions into hallucinated spans (low image-text score), grounded spans
(high score) and whole sentences; push down the hallucinated spans with gradient ascent weighted
by how badly they are grounded, ``(t_hal + t_norm - score)``, while NLL on grounded spans and
sentences, weighted by their own scores, keeps fluency. The negative weight decays linearly from
0.4 to 0 starting at 40% of training, the positive weight from 1 to 0.5, sentences weigh 0.2, and
the whole loss is divided by the signed sum of those weights.

Paper: arXiv 2402.09801 (EFUF, EMNLP 2024).
Upstream: starreeze/efuf finetune/loss.py (``get_loss``, ``WeightScheduler``) @
06cd1ad31302841a32a9c8624c4f58d15fce2003; defaults from common/args.py @
00d19fe80a28fd546e08d6235cb4251900913696 (``hal_clip_thres`` 23, ``norm_clip_thres`` 32,
``neg_w`` 0.4 -> 0 from 40%, ``pos_w`` 1 -> 0.5, ``sent_w`` 0.2, ``gold_w`` 0).

Examples:
    >>> from reference_impls.hallucination.efuf import EFUF
    >>> method = EFUF(steps=60)
    >>> [t.name for t in method.terms()]
    ['forget_efuf', 'grounded_nll', 'retain_nll']
    >>> round(method.terms()[0].weight_at(0), 3)  # 0.4 / (1 + 0.2 - 0.4)
    0.5

Faithful to upstream (``tests/hallucination/test_parity.py`` re-implements ``get_loss``), with
``forget`` = upstream's ``neg``, ``grounded`` = ``pos`` and ``retain`` = ``sent``:

    L = (pos_w mean_i(s_i nll_i) + sent_w mean_i(s_i nll_i) - neg_w mean_i((t_hal + t_norm - s_i) nll_i))
        / (pos_w + sent_w - neg_w)

each ``nll_i`` a sample's token-mean NLL and ``s_i`` its CLIP score, so every batch must carry
``scores``. Upstream's ``gold`` term (COCO reference captions) has weight 0 by default and is
not modelled; a KL retain term (``weight_kl``, off by default) joins the denominator like ``sent``.

Deviations / guesses:

- our synthetic scenes have no CLIP, so the benchmark simulates the scores (see
  :mod:`.bench`); ``nll_i`` as a token mean is our reading of the modified MiniGPT-4 forward
  with ``reduction="none"``, which upstream does not show in this file;
- ``lr`` 1e-4 (upstream 1e-5 on a 7B model) is a setting for our small captioner;
- ``weighting="mean-one"`` (off by default) is the variant this module shipped before it
  followed upstream: forget weights clipped at 0 and divided by their batch mean, unweighted
  NLL on grounded spans and sentences, terms summed without the signed-sum normalisation. Under
  Adam the overall loss scale hardly matters; what differs is the spread of per-sample weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from reference_impls.registry import register

from .base import UnlearningMethod
from .terms import Term, efuf_term, kl_term, nll_term, scored_nll_term

__all__ = ["EFUF"]


def _linear(start: float, end: float, begin: float, total: int):
    """Schedule: ``start`` until ``begin * total`` steps, then linear to ``end`` at ``total``."""

    def weight(step: int) -> float:
        first = begin * total
        if step <= first:
            return start
        return start + (end - start) * min(1.0, (step - first) / max(total - first, 1))

    return weight


@register("efuf", family="hallucination-unlearning", kind="unlearning")
@dataclass
class EFUF(UnlearningMethod):
    lr: float = 1e-4
    """AdamW learning rate (upstream 1e-5 on a 7B model)."""
    weight_forget: float = 0.4
    """Starting weight of the forget term (upstream ``neg_w_start``)."""
    weight_retain: float = 0.2
    """Weight of the whole-sentence NLL (upstream ``sent_w``)."""
    schedule: bool = True
    """Upstream's linear schedules: forget weight to 0 from 40% of the steps, grounded weight to half."""
    t_hal: float = 23.0
    """Score below which a span counts as hallucinated (upstream ``hal_clip_thres``)."""
    t_norm: float = 32.0
    """Score above which a span counts as grounded (upstream ``norm_clip_thres``)."""
    weighting: Literal["upstream", "mean-one"] = "upstream"
    """``"upstream"``: raw score weights and the signed-sum normalisation; ``"mean-one"``: the
    pre-parity variant (see the module's Deviations)."""

    def _forget_weight(self) -> float | Callable[[int], float]:
        return _linear(self.weight_forget, 0.0, 0.4, self.steps) if self.schedule else self.weight_forget

    def _grounded_weight(self) -> float | Callable[[int], float]:
        if self.schedule:
            return _linear(self.weight_grounded, 0.5 * self.weight_grounded, 0.0, self.steps)
        return self.weight_grounded

    def forget_term(self) -> Term:
        normalise = self.weighting == "mean-one"
        return efuf_term(weight=self._forget_weight(), t_hal=self.t_hal, t_norm=self.t_norm, normalise=normalise)

    def retain_terms(self) -> list[Term]:
        if self.weighting == "mean-one":
            terms = super().retain_terms()
            if terms and terms[0].batch == "grounded":
                terms[0] = nll_term("grounded", self._grounded_weight())
            return terms
        terms = []
        if self.weight_grounded:
            terms.append(scored_nll_term("grounded", self._grounded_weight()))
        if self.weight_retain:
            terms.append(scored_nll_term("retain", self.weight_retain))
        if self.weight_kl:
            terms.append(kl_term("retain", self.weight_kl))
        return terms

    def terms(self) -> list[Term]:
        terms = [self.forget_term()] + self.retain_terms()
        if self.weighting == "mean-one":
            return terms
        return [replace(term, weight=_normalised(term, terms)) for term in terms]


def _normalised(term: Term, terms: list[Term]) -> Callable[[int], float]:
    """``term``'s weight divided by the signed weight sum (positive terms minus the forget term)."""

    def weight(step: int) -> float:
        total = sum(-t.weight_at(step) if t.adversarial else t.weight_at(step) for t in terms)
        if total <= 0:
            raise ValueError(f"EFUF's signed weight sum is {total:.3g} at step {step}: the loss would flip sign")
        return term.weight_at(step) / total

    return weight
