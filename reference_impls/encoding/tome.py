"""ToMe: Token Merging (bipartite soft matching), applied to Qwen2.5-VL's merged visual tokens.

Token Merging speeds up a ViT without training by merging similar tokens instead of dropping
them. The tokens are split into two alternating sets A and B; every A token proposes an edge to
its most similar B token (cosine similarity of the keys), the r most similar edges are kept and
their A tokens are folded into their B partners by a size-weighted mean, so a token that already
stands for several patches weighs more. Repeated after every block, this shrinks the sequence
gradually. Here we apply it once, to the post-merger features of each image in raster order, as
a training-free reduction of the visual tokens the language model reads.

Paper: arXiv 2210.09461.

Upstream: facebookresearch/ToMe ``tome/merge.py`` (``bipartite_soft_matching``, ``merge_wavg``),
read in the fork AdityaKane2001/ToMe @ 2417da520a437d13345c19ebd8b748cfa6683e08, whose two
functions are unchanged (the upstream repository's copy of this file is not in our index). Our
rounds reproduce it exactly, including the order of the rows between rounds; the parity test in
``tests/encoding/test_parity.py`` re-implements it.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.tome import tome_reduce
    >>> x = torch.randn(16, 8)
    >>> merged, size, rep = tome_reduce(x, keep=6)
    >>> merged.shape, int(size.sum())
    (torch.Size([6, 8]), 16)

    With a model: ``with ToMe(budget=0.25)(model): model.generate(**inputs)`` keeps
    ``keep_count(n, 0.25)`` merged tokens of every image.

Deviations / guesses:
    - Where: ToMe merges inside every ViT block (between attention and MLP). Qwen2.5-VL's windowed
      blocks and the 2x2 patch merger make in-block merging break ``cu_seqlens`` and the 2x2
      grouping (``docs/notes/transformers5.md`` §6, §10), so we merge the post-merger features, once
      per image.
      The vision tower therefore costs the same; only the language model's input shrinks.
    - Metric: ToMe uses the head-averaged keys of the block; after the merger there are no keys,
      so we use the cosine similarity of the merged features themselves.
    - Schedule: one bipartite round removes at most half of the tokens, so for budgets below 0.5
      we run several rounds on the shrinking set (each round as upstream). Between rounds the
      rows stay in upstream's order, ``cat([unmerged A, B])`` (unmerged A rows by decreasing
      similarity), so round 2 onwards splits A/B exactly as ToMe's next block would; only the
      final rows are sorted by representative (the language model's positions need that).
      ``sort_between_rounds=True`` re-sorts after every round instead (raster-order A/B split in
      every round; our behaviour before the parity check, off by default).
    - Proportional attention (adding log(size) to the attention logits) is not applied in the
      language model; the sizes are returned for anyone who wants to.
    - Position: a merged token takes the 3-D position of its B (destination) token, i.e. of one
      of the original tokens it stands for (our choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reference_impls.common.visual_tokens import keep_count
from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.registry import register

__all__ = ["bipartite_soft_matching", "tome_reduce", "ToMe"]


def bipartite_soft_matching(
    x: torch.Tensor, size: torch.Tensor, rep: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe round: merge the ``r`` most similar A->B edges by size-weighted mean.

    Args:
        x: ``(N, D)`` token features; A = even rows, B = odd rows (alternating, ToMe's split).
        size: ``(N,)`` how many original tokens each row stands for.
        rep: ``(N,)`` representative original index of each row (merged rows keep B's).
        r: number of merges, clipped to ``N // 2`` (as upstream).

    Returns:
        ``(x, size, rep)`` with ``N - r`` rows in upstream's order: the unmerged A rows (by
        decreasing similarity to their best B row), then all B rows.
    """
    a, b = x[0::2], x[1::2]  # (Na, D), (Nb, D)
    r = min(r, a.shape[0], b.shape[0]) if b.shape[0] else 0
    if r <= 0:
        return x, size, rep
    scores = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # (Na, Nb)
    best, partner = scores.max(dim=-1)  # each A token's most similar B token
    order = best.argsort(descending=True, stable=True)
    merged_a, kept_a = order[:r], order[r:]

    size_a, size_b = size[0::2], size[1::2]
    mass_b = (b * size_b[:, None]).index_add(0, partner[merged_a], a[merged_a] * size_a[merged_a, None])
    new_size_b = size_b.index_add(0, partner[merged_a], size_a[merged_a])
    new_b = mass_b / new_size_b[:, None]

    x_out = torch.cat([a[kept_a], new_b.to(x.dtype)])
    size_out = torch.cat([size_a[kept_a], new_size_b])
    rep_out = torch.cat([rep[0::2][kept_a], rep[1::2]])
    return x_out, size_out, rep_out


def tome_reduce(
    x: torch.Tensor, keep: int, sort_between_rounds: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``x`` down to ``keep`` rows with as many bipartite rounds as needed.

    Args:
        x: ``(N, D)`` features of one image, raster order.
        keep: rows to keep, ``1 <= keep <= N``.
        sort_between_rounds: re-sort the rows by representative after every round (deviation,
            see the module doc); by default they keep upstream's order until the end.

    Returns:
        merged ``(keep, D)`` features, their sizes ``(keep,)`` (summing to ``N``) and the
        representative original index of each ``(keep,)``, ascending.
    """
    n = x.shape[0]
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {keep}")
    size = torch.ones(n, dtype=torch.float32, device=x.device)
    rep = torch.arange(n, device=x.device)
    while x.shape[0] > keep:
        x, size, rep = bipartite_soft_matching(x, size, rep, x.shape[0] - keep)
        if sort_between_rounds:
            order = rep.argsort()
            x, size, rep = x[order], size[order], rep[order]
    order = rep.argsort()  # representatives ascending, the order the positions need
    return x[order], size[order], rep[order]


@register("tome", family="encoding-compression-attention-agnostic", kind="visual-token")
@dataclass
class ToMe(EncodingMethod):
    """Bipartite soft matching of every image's merged tokens down to ``keep_count(n, budget)``.

    Videos are merged as one raster sequence over all their frames (so similar tokens of
    different frames can merge).

    Attributes:
        sort_between_rounds: re-sort rows by representative between rounds (deviation, off).
    """

    sort_between_rounds: bool = False

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        keep = keep_count(item.count, self.budget)
        if keep == item.count:
            return keep_all(item)
        merged, _, rep = tome_reduce(item.features, keep, self.sort_between_rounds)
        return merged, rep
