"""Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation.

Heads differ in how concentrated their attention is: a head that looks at a handful of tokens
needs few entries, a diffuse head needs many. Ada-KV keeps a layer's total budget but ranks the
SnapKV scores of all its heads jointly, so each head gets as many entries as its scores earn in
the layer-wide top-k; a floor guarantees every head a minimum share. Heads therefore hold
different numbers of entries, and the cache stores them that way.

Paper: arXiv 2407.11550

Upstream: FFY0/AdaKV adaptive_snapkv/monkeypatch/snapkv_utils.py @ 1baceda55924419c444815f377b1a44e9a604402
(``AdaptiveSnapKVCluster.update_kv_gqa``; configuration from experiments/LongBench/GQA_eval_longbench.sh
at the same commit).

Example::

    from reference_impls.decoding.adakv import AdaKV
    method = AdaKV(budget=0.2)
    with method(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    [layer.head_lengths() for layer in method.cache.layers]  # differ per head

The default is the authors' rule in their GQA mode, with the configuration their GQA script
uses (window 32, kernel 7, max pooling, ``floor_alpha = 0.2``, "which we suggest while using
GQA"): the window rows' mean attention, averaged over the query heads of each KV head, pooled
over the positions before the window (SnapKV's upstream pooling); the ``H (b - w)`` best
scores of the layer give head ``h`` a count ``c_h``, and head ``h`` keeps its own
``round(0.8 c_h + int(0.2 (b - w)))`` best positions plus the window
(:func:`~reference_impls.decoding.kv_scores.adakv_head_capacities`). The rounding can move the
layer total a few entries away from ``H b``.

Deviations: real per-head storage in our ragged layer (the authors use a flattened layout with
varlen flash attention; the memory is the same); scores in float32; ``exact_total=True``
selects our earlier allocation instead (every head first gets its ``int(alpha (b - w))`` best
entries, then the layer's global best fill the rest, so the total is exactly ``H b``; this is
what HybridKV uses). The authors' non-GQA mode (repeat K/V and allocate per query head) is not
implemented: it would store ``G`` copies of every KV head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import KVCacheMethod, RaggedLayer
from reference_impls.decoding.kv_scores import (
    adakv_head_capacities,
    allocate_with_floor,
    observation_scores,
    top_per_row,
)
from reference_impls.registry import register

__all__ = ["AdaKV", "AdaKVLayer", "adaptive_head_index"]


def adaptive_head_index(
    scores: torch.Tensor, budget: int, window: int, alpha: float, exact_total: bool = False
) -> list[torch.Tensor]:
    """Per-head kept indices for ``(H, N)`` scores whose last ``window`` columns are the window.

    Every head keeps the window. The other entries: head ``h`` keeps its own best
    ``adakv_head_capacities(...)[h]`` (default), or, with ``exact_total``, the ``H * (budget -
    window)`` entries chosen by :func:`allocate_with_floor` with a floor of ``int(alpha * (budget - window))``.
    """
    h, n = scores.shape
    free = budget - window
    window_idx = torch.arange(n - window, n)
    past = scores[:, : n - window]
    if exact_total:
        _, selected = allocate_with_floor(past, h * free, int(alpha * free))
        return [torch.cat([selected[i].nonzero().view(-1), window_idx]) for i in range(h)]
    capacity = adakv_head_capacities(past, free, alpha)
    return [torch.cat([top_per_row(past[i : i + 1], int(capacity[i]))[0], window_idx]) for i in range(h)]


class AdaKVLayer(RaggedLayer):
    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        m = self.method
        window = min(m.window, b)
        scores = observation_scores(query, self.keys, window, scaling, m.pool_kernel, m.pooling).cpu()
        self.keep_per_head(adaptive_head_index(scores, b, window, m.alpha, m.exact_total))


@register("adakv", family="kv-head-level", kind="kv-cache")
@dataclass
class AdaKV(KVCacheMethod):
    """Ada-KV configuration.

    Args:
        budget: mean entries per KV head (the layer total is about ``H * budget``), window included.
        window: observation window.
        pool_kernel: SnapKV score smoothing width.
        pooling: ``"max"`` (the authors' configuration) or ``"avg"``.
        alpha: floor fraction of each head's non-window share (``floor_alpha``).
        exact_total: our earlier floor-first allocation, exact layer total.
    """

    budget: float | int = 0.1
    window: int = 32
    pool_kernel: int = 7
    pooling: str = "max"
    alpha: float = 0.2
    exact_total: bool = False

    layer_class = AdaKVLayer
