"""LLaVA-PruMerge: keep the outlier tokens, merge the rest into them.

PruMerge observes that a CLIP encoder's class-token attention over the patches is sparse: a few
patches get far more attention than the rest. It keeps those patches, found adaptively as the
*outliers* of the score distribution by the interquartile-range rule (score above
``Q3 + 1.5 * IQR``), so a simple image keeps fewer tokens than a busy one. The pruned patches are
not thrown away: each kept token ``i`` adds its ``k = 32`` most similar other tokens (key cosine
similarity, kept or pruned), weighted by their attention and *not normalised*:
``x_i + sum_j a_j x_j``; one extra token, the attention-weighted sum of all pruned tokens
``sum_pruned a_j x_j``, is appended after the kept ones. PruMerge+ adds spatially uniform samples
to the outliers to recover accuracy at a larger token count.

Paper: arXiv 2403.15388.

Upstream: 42Shawn/LLaVA-PruMerge ``llava/model/multimodal_encoder/clip_encoder.py``
(``token_prune_merge_advanced``, the one ``forward`` calls) @
1ca8b2baa21b3614a8f1672c781b15af573f5b13. The parity test in ``tests/encoding/test_parity.py``
re-implements its selection and merge.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.prumerge import iqr_outliers
    >>> iqr_outliers(torch.tensor([1.0, 1.1, 0.9, 1.0, 9.0, 1.05, 0.95, 1.0])).nonzero().flatten().tolist()
    [4]

    With a model: ``with PruMerge(budget=0.25)(model): model.generate(**inputs)``;
    ``PruMerge(adaptive=True)`` keeps only the outliers (plus the extra token) of each image.

Deviations / guesses:
    - Score: Qwen2.5-VL has no class token, and this family is the attention-agnostic one, so the
      default score is how far a token's feature lies from the image's mean feature (L2 distance);
      ``score="attention"`` uses the attention a token receives in the last full-attention vision
      block instead (the VisionZip score, closer to the paper's CLS attention).
    - Merge weights: upstream weighs the neighbours by CLS attention, a distribution over the
      patches; we normalise the score to sum to 1 over the item, which leaves the attention score
      of an image unchanged and gives the distinctiveness score the same scale.
    - Similarity: upstream compares the keys of the attention layer; with ``score="attention"`` we
      use the head-averaged keys of the last full-attention block, with the default score the
      post-merger features themselves (the attention-free family has no keys). ``neighbours``
      (default 32, as upstream) is capped at the item's other tokens.
    - Budget: the registry's visual-token interface fixes a budget, so the token count per image
      is exactly ``keep_count(n, budget)`` (``round(n * budget)``, at least 1), the extra token
      included: the IQR outliers in score order first (cut to the budget when there are more),
      then, as in PruMerge+, evenly spaced samples (raster order) among the other tokens to fill
      it (PruMerge+'s own stride, ``int(int(1 / ratio) / 3)`` over 575 patches, does not fix the
      count). ``adaptive=True`` keeps only the outliers (the paper's adaptive count, at least
      one token) plus the extra token, as upstream's default.
    - Positions: a kept token keeps its own 3-D position; the extra token, which upstream appends
      after the image's tokens, takes the position of the last pruned token in raster order (our
      choice). ``extra_token=False`` leaves it out (one more kept token instead).
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

__all__ = ["iqr_outliers", "distinctiveness", "prumerge_select", "prumerge_merge", "PruMerge"]


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


def prumerge_merge(
    x: torch.Tensor,
    kept: torch.Tensor,
    weights: torch.Tensor,
    metric: torch.Tensor,
    neighbours: int = 32,
    extra_token: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PruMerge's merge: every kept row adds its nearest neighbours, weighted; plus one extra row.

    Args:
        x: ``(N, D)`` features.
        kept: ``(K,)`` indices of the kept rows, ascending.
        weights: ``(N,)`` weight of every row (upstream: CLS attention).
        metric: ``(N, Dm)`` vectors whose cosine similarity picks the neighbours (upstream: keys).
        neighbours: ``k``, capped at ``N - 1``.
        extra_token: append ``sum_pruned w_j x_j`` (when any row is pruned).

    Returns:
        features ``(K, D)`` (or ``(K + 1, D)``) and their representative indices, ascending: kept
        row ``i`` becomes ``x_i + sum_{j in kNN(i)} w_j x_j`` over the other ``N - 1`` rows (original
        features, unnormalised); the extra row takes the index of the last pruned row.
    """
    n = x.shape[0]
    xf, w = x.float(), weights.float()
    normed = F.normalize(metric.float(), dim=-1)
    similarity = normed[kept] @ normed.T  # (K, N)
    similarity[torch.arange(kept.numel(), device=x.device), kept] = -torch.inf  # a row is not its own neighbour
    nearest = similarity.topk(min(neighbours, n - 1), dim=-1).indices  # (K, k)
    feats = xf[kept] + (w[nearest, None] * xf[nearest]).sum(dim=1)  # (K, D)
    rep = kept
    pruned_mask = torch.ones(n, dtype=torch.bool, device=x.device)
    pruned_mask[kept] = False
    pruned = pruned_mask.nonzero().flatten()
    if extra_token and pruned.numel():
        extra = (w[pruned, None] * xf[pruned]).sum(dim=0, keepdim=True)  # (1, D)
        feats, rep = torch.cat([feats, extra]), torch.cat([kept, pruned[-1:]])
    order = rep.argsort()
    return feats[order].to(x.dtype), rep[order]


@register("prumerge", family="encoding-compression-attention-agnostic", kind="visual-token")
@dataclass
class PruMerge(EncodingMethod):
    """IQR-outlier selection plus PruMerge's k-NN merge and extra token, per image (and per video).

    Attributes:
        score: ``"distinctiveness"`` (attention-free, default) or ``"attention"`` (attention
            received in the last full-attention vision block).
        adaptive: keep only the IQR outliers (ignores ``budget``).
        neighbours: tokens each kept token absorbs (upstream: 32).
        extra_token: add upstream's extra token (attention-weighted sum of the pruned tokens).
    """

    score: str = "distinctiveness"
    adaptive: bool = False
    neighbours: int = 32
    extra_token: bool = True
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
            scores, metric = self._recorder.item_scores(item)
        else:
            scores, metric = distinctiveness(item.features), item.features
        extra = self.extra_token and (keep is None or keep > 1)  # the extra token takes one of the `keep` slots
        kept = prumerge_select(scores, keep if keep is None or not extra else keep - 1)
        weights = scores.float() / scores.float().sum().clamp_min(1e-12)  # a distribution, like CLS attention
        return prumerge_merge(item.features, kept, weights, metric, self.neighbours, extra)
