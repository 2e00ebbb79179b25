"""SnapKV: LLM Knows What You are Looking for Before Generation.

The queries at the end of the prompt (the *observation window*, normally the question) already
show which earlier positions generation will read. SnapKV scores every prompt position by the
attention those window queries pay to it, smooths the scores with a 1-D pooling so that
neighbours of important tokens survive together, and keeps, once at the end of the prefill, the
top entries of each KV head plus the window itself. Generated tokens are appended unchanged.

Paper: arXiv 2404.14469

Example::

    from reference_impls.decoding.snapkv import SnapKV
    with SnapKV(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

Deviations / guesses: the window attention is averaged over the window queries and over the
query heads of each KV head (kvpress style; the original sums) and computed from post-RoPE q/k
inside our attention function; the window counts inside the budget (KVCache-Factory practice);
window 32 and pooling kernel 7 follow KVCache-Factory's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod
from reference_impls.decoding.kv_scores import observation_scores, top_per_row
from reference_impls.registry import register

__all__ = ["SnapKV", "SnapKVLayer"]


class SnapKVLayer(CompressedLayer):
    """Keeps the ``budget`` best entries per KV head once, after the prefill."""

    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        scores = observation_scores(query, self.keys, min(self.method.window, b), scaling, self.method.pool_kernel)
        self.keep(top_per_row(scores, b))  # (H, b)


@register("snapkv", family="kv-token-level", kind="kv-cache")
@dataclass
class SnapKV(KVCacheMethod):
    """SnapKV configuration.

    Args:
        budget: entries kept per KV head (float: fraction of the prompt; int: count), window included.
        window: observation window (last prompt queries).
        pool_kernel: width of the score smoothing.
    """

    budget: float | int = 0.1
    window: int = 32
    pool_kernel: int = 7

    layer_class = SnapKVLayer
