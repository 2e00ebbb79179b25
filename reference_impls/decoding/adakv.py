"""Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation.

Heads differ in how concentrated their attention is: a head that looks at a handful of tokens
needs few entries, a diffuse head needs many. Ada-KV keeps a layer's total budget but ranks the
SnapKV scores of all its heads jointly and keeps the global top entries, so each head gets as
many entries as its scores earn; a floor guarantees every head a minimum share. Heads therefore
hold different numbers of entries, and the cache stores them that way.

Paper: arXiv 2407.11550

Example::

    from reference_impls.decoding.adakv import AdaKV
    method = AdaKV(budget=0.2)
    with method(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    [layer.head_lengths() for layer in method.cache.layers]  # differ per head

Deviations / guesses: real per-head storage (one tensor per KV head, read by our attention
function) instead of the "fake key" masking of kvpress, which saves no memory; the floor is
``alpha = 0.2`` of each head's share of the non-window budget (the safeguard of the public
kvpress / KVCache-Factory code); the window is kept in every head and counted in its budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import KVCacheMethod, RaggedLayer
from reference_impls.decoding.kv_scores import allocate_with_floor, observation_scores
from reference_impls.registry import register

__all__ = ["AdaKV", "AdaKVLayer", "adaptive_head_index"]


def adaptive_head_index(scores: torch.Tensor, budget: int, window: int, alpha: float) -> list[torch.Tensor]:
    """Per-head kept indices for ``(H, N)`` scores whose last ``window`` columns are the window.

    Every head keeps the window; the ``H * (budget - window)`` other entries are allocated across
    heads by :func:`allocate_with_floor` with a floor of ``floor(alpha * (budget - window))``.
    """
    h, n = scores.shape
    free = budget - window
    counts, selected = allocate_with_floor(scores[:, : n - window], h * free, int(alpha * free))
    window_idx = torch.arange(n - window, n)
    return [torch.cat([selected[i].nonzero().view(-1), window_idx]) for i in range(h)]


class AdaKVLayer(RaggedLayer):
    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        window = min(self.method.window, b)
        scores = observation_scores(query, self.keys, window, scaling, self.method.pool_kernel).cpu()
        self.keep_per_head(adaptive_head_index(scores, b, window, self.method.alpha))


@register("adakv", family="kv-head-level", kind="kv-cache")
@dataclass
class AdaKV(KVCacheMethod):
    """Ada-KV configuration.

    Args:
        budget: mean entries per KV head (the layer total is ``H * budget``), window included.
        window: observation window.
        pool_kernel: SnapKV score smoothing.
        alpha: floor fraction of each head's non-window share.
    """

    budget: float | int = 0.1
    window: int = 32
    pool_kernel: int = 7
    alpha: float = 0.2

    layer_class = AdaKVLayer
