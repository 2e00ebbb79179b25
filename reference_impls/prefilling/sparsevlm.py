"""SparseVLM: text-guided, staged visual token sparsification with optional token recycling.

SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference. Not every
text token is a good judge of which visual tokens matter, so SparseVLM first picks *text
raters*: the text tokens whose relevance to the visual tokens exceeds the average relevance.
Their head-averaged attention to the visual columns scores the visual tokens, and the lowest
are dropped at a few layers (a schedule over depth). Instead of discarding pruned tokens
outright, the best of them can be *recycled*: clustered and merged into a few extra tokens.

Paper: arXiv 2410.04417 (code: Gumpest/SparseVLMs).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.sparsevlm import SparseVLM
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> method = SparseVLM(budget=0.25, recycle=True)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]
    4

Deviations / guesses:
    - Scores are read from layer K-1's attention (as FastV), recomputed from q/k in a hook.
    - Relevance of a text token = its attention mass on the visual tokens (head-averaged,
      causal: a question placed before the image cannot rate it). Raters are the prompt text
      tokens (not padding, not the vision start/end markers, which sit next to the image and
      would otherwise dominate) above the mean relevance; with none, the last prompt token
      rates alone.
    - The paper's layers [2, 6, 15] of 32 are scaled to the model's depth. Its per-target keep
      schedules (e.g. 576 -> 66/30/17 for the "64" setting) are replaced by a geometric schedule
      ending exactly at ``budget`` (``budget ** (s/S)`` of the visual tokens after stage s).
    - Recycling: the top 30% of the tokens pruned at a stage (by score) form ``n // 10 + 1``
      clusters around their highest-scored members (cosine similarity of hidden states; the
      paper uses density-peak k-NN clustering); each cluster's mean hidden state replaces its
      centre, which keeps the centre's original position. The clusters take slots from the
      kept budget, so the kept count still equals the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, DropMethod, _gather, attention_rows, keep_top_visual
from reference_impls.prefilling.pyramiddrop import stage_layers
from reference_impls.registry import register

__all__ = ["SparseVLM", "rater_scores"]


def rater_scores(probs: torch.Tensor, visual_cols: torch.Tensor, rater_ok: torch.Tensor) -> torch.Tensor:
    """Visual-token scores from the text raters.

    Args:
        probs: (B, r, n) head-averaged attention of the r text tokens.
        visual_cols: (B, n) bool, visual columns.
        rater_ok: (B, r) bool, rows that may rate (prompt text: no padding, no vision markers).

    Returns:
        (B, n) mean attention of the raters (zero outside visual columns).
    """
    to_visual = probs * visual_cols[:, None, :]  # (B, r, n)
    relevance = to_visual.sum(-1)  # (B, r)
    mean = (relevance * rater_ok).sum(-1, keepdim=True) / rater_ok.sum(-1, keepdim=True).clamp(min=1)
    raters = rater_ok & (relevance > mean)
    # No rater above the mean (e.g. a single text token): the last text row rates alone.
    none = ~raters.any(-1)
    raters[none, -1] = True
    weights = raters.float() / raters.sum(-1, keepdim=True)
    return (weights[:, :, None] * to_visual).sum(1)  # (B, n)


def _recycle(hidden: torch.Tensor, scores: torch.Tensor, visual: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``k`` visual tokens of which a few are merged clusters of recycled pruned tokens."""
    batch = hidden.shape[0]
    ranked = scores.float().masked_fill(~visual, float("-inf")).argsort(-1, descending=True)  # (B, n)
    n_visual = int(visual[0].sum())
    n_recycled = -(-(n_visual - k) * 3 // 10)  # ceil(30%) of the pruned tokens
    clusters = min(k, n_recycled // 10 + 1) if n_recycled else 0
    new_hidden = hidden.clone()
    keep_rows = []
    for b in range(batch):
        top = ranked[b, : k - clusters]
        recycled = ranked[b, k : k + n_recycled]
        centres = recycled[:clusters]
        if clusters:
            feats = torch.nn.functional.normalize(hidden[b, recycled].float(), dim=-1)
            assign = (feats @ feats[:clusters].T).argmax(-1)  # (n_recycled,)
            assign[:clusters] = torch.arange(clusters)
            for c in range(clusters):
                new_hidden[b, centres[c]] = hidden[b, recycled[assign == c]].mean(0)
        keep = (~visual[b]).clone()
        keep[top] = True
        keep[centres] = True
        keep_rows.append(keep.nonzero()[:, 0])
    keep = torch.stack(keep_rows)
    return keep, _gather(new_hidden, keep, 1)


@register("sparsevlm", family="prefilling-attention-guided", kind="visual-token")
@dataclass
class SparseVLM(DropMethod):
    """SparseVLM configuration.

    Args:
        budget: fraction of visual tokens left after the last stage (0 < budget <= 1).
        layers_frac: pruning layers as fractions of depth (paper: 2/32, 6/32, 15/32).
        recycle: merge the best pruned tokens into cluster tokens instead of discarding them.
    """

    budget: float = 0.25
    layers_frac: tuple[float, ...] = (2 / 32, 6 / 32, 15 / 32)
    recycle: bool = False
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def boundaries(self, num_layers: int) -> list[int]:
        self._layers = stage_layers(self.layers_frac, num_layers)
        return self._layers

    def stash(self, num_layers: int) -> set[int]:
        return {layer - 1 for layer in self.boundaries(num_layers)}

    def select(self, ctx: DropContext) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        stage = self._layers.index(ctx.layer_idx) + 1
        k = keep_count(ctx.n_visual_in, self.budget ** (stage / len(self._layers)))
        hidden, cos, sin = ctx.inputs[ctx.layer_idx - 1]
        rows = (~ctx.visual).nonzero()[:, 1].view(ctx.visual.shape[0], -1)  # (B, r) text rows
        probs = attention_rows(ctx.layers[ctx.layer_idx - 1], hidden, cos, sin, rows, ctx.valid)
        scores = rater_scores(probs, ctx.visual, _gather(ctx.text, rows, 1))
        if self.recycle and k < int(ctx.visual[0].sum()):
            return _recycle(ctx.hidden, scores, ctx.visual, k)
        return keep_top_visual(scores, ctx.visual, k)
