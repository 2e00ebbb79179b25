"""DivPrune: keep the most diverse visual tokens (max-min diversity), no attention needed.

DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models. Attention-based
ranking tends to keep many near-duplicate tokens. DivPrune instead casts pruning as a Max-Min
Diversity Problem: choose the subset of visual tokens whose smallest pairwise (cosine) distance
is as large as possible. It is solved greedily: start with the token whose nearest neighbour
is farthest away, then repeatedly add the token farthest from everything chosen so far
(farthest-point sampling). It needs only the visual features, so it is task-agnostic and
compatible with flash attention.

Paper: arXiv 2503.02175

Upstream: vbdi/divprune ``LLaVA/llava/model/llava_arch.py`` (``DivPrune()``, applied to the
projector outputs in ``prepare_inputs_labels_for_multimodal``). Our code index holds only that
repository's README (@ 3a1227fd2d0326c1de8679b3ce4119ac1314f066), so the rule was read from the
same function as carried verbatim by derivative repositories: cosine distance, the first pick is
the token whose nearest other token is farthest, then the token whose minimum distance to the
picked ones is largest, ``int(round(ratio * n))`` picks, kept in sequence order. Our
:func:`max_min_select` picks the same tokens in the same order (parity test).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.divprune import DivPrune
    >>> model = tiny_qwen25vl()
    >>> method = DivPrune(budget=0.25)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]
    4

Deviations:
    - Positions: ``positions="keep"`` (default) keeps the kept tokens' original M-RoPE
      positions; ``"renumber"`` gives them 0..n-1 as LLaVA does for the shorter sequence
      upstream feeds its LLM. Why keep is the default on Qwen2.5-VL: see
      :mod:`~reference_impls.prefilling.pyramiddrop` (the same holds for every pre-LLM pruning
      method here).
    - Where we apply it: by default (``layer=0``) on the visual embeddings *entering* the LLM
      (the merger outputs), as the paper does before the LLM; ``layer=K`` applies it to the
      hidden states entering layer K instead (then layers < K keep every token).
    - Already-picked tokens are excluded explicitly (upstream relies on their zero distance to
      themselves, which is the same up to float rounding). At least one token is kept.
    - Several images in one prompt are pooled and selected jointly (the paper handles one
      image; per-image selection would be a one-line change).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, Positions, SingleLayerDrop
from reference_impls.registry import register

__all__ = ["DivPrune", "max_min_select"]


def max_min_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max-min diversity subset of ``features`` in cosine distance.

    Args:
        features: (n, D) token features.
        k: how many to select (<= n).

    Returns:
        (k,) indices in selection order.
    """
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    distance = 1 - unit @ unit.T  # (n, n)
    n = distance.shape[0]
    # Seed: the token whose nearest other token is farthest away.
    nearest = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=distance.device), float("inf")).amin(-1)
    chosen = [int(nearest.argmax())] if k > 0 else []
    to_set = distance[chosen[0]].clone() if chosen else None  # (n,) distance to the chosen set
    for _ in range(1, k):
        to_set[chosen] = float("-inf")
        pick = int(to_set.argmax())
        chosen.append(pick)
        to_set = torch.minimum(to_set, distance[pick])
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


@register("divprune", family="prefilling-diversity-guided", kind="visual-token")
@dataclass
class DivPrune(SingleLayerDrop):
    """DivPrune configuration.

    Args:
        budget: fraction of visual tokens kept (0 < budget <= 1).
        layer: 0 prunes the embeddings entering the LLM (paper); K > 0 prunes at layer K.
        positions: ``"keep"`` the original M-RoPE positions (default) or ``"renumber"`` them.
    """

    budget: float = 0.1
    layer: int = 0
    positions: Positions = "keep"
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def select(self, ctx: DropContext) -> torch.Tensor:
        k = keep_count(ctx.n_visual_in, self.budget)
        if k == ctx.n_visual_in:  # nothing to drop: skip the O(k n) greedy loop
            return torch.arange(ctx.hidden.shape[1], device=ctx.hidden.device).expand(ctx.hidden.shape[0], -1)
        rows = []
        for b in range(ctx.hidden.shape[0]):
            visual = ctx.visual[b].nonzero()[:, 0]  # (n_visual,)
            keep = ~ctx.visual[b]
            keep[visual[max_min_select(ctx.hidden[b, visual], k)]] = True
            rows.append(keep.nonzero()[:, 0])
        return torch.stack(rows)
