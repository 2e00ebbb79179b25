"""LLaVA-PruMerge: keep the outlier tokens, merge the rest into them.

PruMerge observes that a CLIP encoder's class-token attention over the patches is sparse: a few
patches get far more attention than the rest. It keeps those patches, found adaptively as the
*outliers* of the score distribution by the interquartile-range rule (score above
``Q3 + 1.5 * IQR``), so a simple image keeps fewer tokens than a busy one. The pruned patches are
not thrown away: each kept token absorbs its most similar pruned neighbours (key similarity),
weighted by their scores, so their information survives in a shorter sequence. PruMerge+ adds
spatially uniform samples to the outliers to recover accuracy at a larger token count.

Paper: arXiv 2403.15388 (public code: Unicorn-3965/LLaVA-PruMerge).

Examples:
    >>> import torch
    >>> from reference_impls.encoding.prumerge import iqr_outliers
    >>> iqr_outliers(torch.tensor([1.0, 1.1, 0.9, 1.0, 9.0, 1.05, 0.95, 1.0])).nonzero().flatten().tolist()
    [4]

    With a model: ``with PruMerge(budget=0.25)(model): model.generate(**inputs)``;
    ``PruMerge(adaptive=True)`` keeps only the outliers of each image.

Deviations / guesses:
    - Score: Qwen2.5-VL has no class token, and this family is the attention-agnostic one, so the
      default score is how far a token's feature lies from the image's mean feature (L2 distance);
      ``score="attention"`` uses the attention a token receives in the last full-attention vision
      block instead (the VisionZip score, closer to the paper's CLS attention).
    - Budget: the registry's visual-token interface fixes a budget, so the kept count per image
      is exactly ``keep_count(n, budget)`` (``round(n * budget)``, at least 1): the IQR outliers
      in score order first (cut to the budget when there are more), then, as in PruMerge+,
      evenly spaced samples (raster order) among the other tokens to fill it.
      ``adaptive=True`` keeps only the outliers (the paper's adaptive count, at least one token).
    - Merge: every pruned token goes to its single most similar kept token (cosine of the
      post-merger features) and the kept token becomes the score-weighted mean of itself and its
      assigned tokens; the paper updates each kept token from its k nearest neighbours instead.
    - Applied to the post-merger features in raster order; a kept token keeps its own position.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reference_impls.common.visual_tokens import Selection, VisualContext, keep_count
from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.encoding.visionzip import AttentionRecorder
from reference_impls.registry import register

__all__ = ["iqr_outliers", "distinctiveness", "prumerge_select", "merge_into_kept", "PruMerge"]


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """Boolean mask of high outliers: ``scores > Q3 + 1.5 * (Q3 - Q1)``. ``(N,) -> (N,)``."""
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device))
    return scores.float() > q3 + 1.5 * (q3 - q1)


def distinctiveness(x: torch.Tensor) -> torch.Tensor:
    """Attention-free importance score: L2 distance of each row of ``x (N, D)`` from the mean row."""
    return (x.float() - x.float().mean(dim=0, keepdim=True)).norm(dim=-1)


def prumerge_select(scores: torch.Tensor, keep: int | None) -> torch.Tensor:
    """Indices of the kept tokens, ascending.

    Args:
        scores: ``(N,)`` importance of each token.
        keep: exact number to keep, or ``None`` for the IQR outliers only (at least one).

    Returns:
        ``(K,)`` long indices: outliers by descending score, then uniform fill (see module doc).
    """
    n = scores.shape[0]
    outliers = iqr_outliers(scores).nonzero().flatten()
    outliers = outliers[scores[outliers].argsort(descending=True, stable=True)]
    if keep is None:
        chosen = outliers if outliers.numel() else scores.argmax().view(1)
        return chosen.sort().values
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {keep}")
    chosen = outliers[:keep]
    missing = keep - chosen.numel()
    if missing > 0:
        taken = torch.zeros(n, dtype=torch.bool, device=scores.device)
        taken[chosen] = True
        rest = (~taken).nonzero().flatten()
        # uniform stride over the remaining tokens in raster order (PruMerge+'s spatial samples)
        pick = (torch.arange(missing, device=scores.device) * rest.numel()) // missing
        chosen = torch.cat([chosen, rest[pick]])
    return chosen.sort().values


def merge_into_kept(x: torch.Tensor, kept: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Fold every pruned row of ``x`` into its most similar kept row (weighted mean).

    Args:
        x: ``(N, D)`` features.
        kept: ``(K,)`` indices of the kept rows.
        weights: ``(N,)`` positive weight of every row in the means.

    Returns:
        ``(K, D)``: kept row ``j`` becomes ``sum_i w_i x_i / sum_i w_i`` over itself and the pruned
        rows assigned to it.
    """
    n = x.shape[0]
    pruned_mask = torch.ones(n, dtype=torch.bool, device=x.device)
    pruned_mask[kept] = False
    pruned = pruned_mask.nonzero().flatten()
    w = weights.float().clamp_min(1e-6)
    mass = x[kept].float() * w[kept, None]  # (K, D)
    total = w[kept].clone()  # (K,)
    if pruned.numel():
        similarity = F.normalize(x[pruned].float(), dim=-1) @ F.normalize(x[kept].float(), dim=-1).T  # (P, K)
        target = similarity.argmax(dim=-1)
        mass = mass.index_add(0, target, x[pruned].float() * w[pruned, None])
        total = total.index_add(0, target, w[pruned])
    return (mass / total[:, None]).to(x.dtype)


@register("prumerge", family="encoding-compression-attention-agnostic", kind="visual-token")
@dataclass
class PruMerge(EncodingMethod):
    """IQR-outlier selection plus score-weighted merging, per image (and per video).

    Attributes:
        score: ``"distinctiveness"`` (attention-free, default) or ``"attention"`` (attention
            received in the last full-attention vision block).
        adaptive: keep only the IQR outliers (ignores ``budget``).
    """

    score: str = "distinctiveness"
    adaptive: bool = False
    _recorder: AttentionRecorder | None = field(default=None, init=False, repr=False, compare=False)

    def install(self, model, stack: ExitStack) -> None:
        if self.score not in ("distinctiveness", "attention"):
            raise ValueError(f"unknown score {self.score!r}")
        self._recorder = AttentionRecorder.attach(model, stack) if self.score == "attention" else None

    def select(self, ctx: VisualContext) -> Selection:
        try:
            return super().select(ctx)
        finally:
            if self._recorder is not None:
                self._recorder.clear()

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        keep = None if self.adaptive else keep_count(item.count, self.budget)
        if keep == item.count:
            return keep_all(item)
        if self._recorder is not None:
            scores = self._recorder.item_scores(item)[0]
        else:
            scores = distinctiveness(item.features)
        kept = prumerge_select(scores, keep)
        return merge_into_kept(item.features, kept, scores), kept
