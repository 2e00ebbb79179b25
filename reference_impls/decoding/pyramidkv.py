"""PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling.

Attention spreads widely in the lower layers and funnels onto a few tokens in the upper ones, so
PyramidKV gives lower layers more KV entries than upper ones: per-layer budgets fall linearly
with depth while the total stays about that of a uniform budget. Inside each layer the entries
are chosen as in SnapKV (observation-window attention, pooled).

Paper: arXiv 2406.02069

Upstream: Zefan-Cai/KVCache-Factory pyramidkv/pyramidkv_utils.py @ 5fb995d72366fff6d00620cd33fad99b38725907
(``PyramidKVCluster.update_kv``; K/V are repeated to the query heads before it, pyramidkv/llama_model.py
@ 485af3cb33433f7d8814388d5125c7813e3bc458).

Example::

    from reference_impls.decoding.pyramidkv import PyramidKV
    with PyramidKV(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

The default schedule is KVCache-Factory's integer rule (:func:`~reference_impls.decoding.kv_scores.pyramidkv_budgets`):
with ``m = b - w``, ``min = m // beta``, ``max = 2m - min`` (``max`` capped at ``n - w``, ``min``
then ``2m - max``), layer ``l`` keeps ``w + max - l * ((max - min) // (L - 1))``; ``beta = 20``.
The floor division makes the total slightly larger than ``L * b``. A prompt shorter than
``2 (b - w)`` gets the uniform budget ``b`` in every layer. Selection inside a layer is
:class:`~reference_impls.decoding.snapkv.SnapKV`'s (its ``window``, ``pool_kernel``, ``pooling``
and ``gqa`` fields; the upstream code repeats K/V, so ``gqa="repeat"`` is the default here too).

Deviations: ``exact_total=True`` selects our earlier schedule instead (the same line, rounded by
largest remainder so the layer budgets sum exactly to ``L * b``, clipped at the prompt length
with the excess moved to the smallest layers; not monotone when the clip binds). The window is
shortened to the budget when a layer gets fewer entries than it. SnapKV's deviations apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.decoding.cache import resolve_budget
from reference_impls.decoding.kv_scores import pyramid_budgets, pyramidkv_budgets
from reference_impls.decoding.snapkv import SnapKV, SnapKVLayer
from reference_impls.registry import register

__all__ = ["PyramidKV", "layer_budgets"]


def layer_budgets(method: PyramidKV, n_layers: int, n: int) -> list[int]:
    """Per-layer entries per head for a prompt of ``n`` tokens."""
    b = resolve_budget(method.budget, n)
    window = min(method.window, b)
    if method.exact_total:
        return pyramid_budgets(n_layers, b, window, method.beta, cap=n)
    return pyramidkv_budgets(n_layers, b, window, n, method.beta)


class _PyramidLayer(SnapKVLayer):
    def layer_budget(self, n):
        return layer_budgets(self.method, self.method.n_layers, n)[self.layer_idx]


@register("pyramidkv", family="kv-layer-level", kind="kv-cache")
@dataclass
class PyramidKV(SnapKV):
    """PyramidKV configuration (SnapKV's fields plus the schedule).

    Args:
        beta: pyramid steepness (``min = (b - w) // beta``).
        exact_total: use the largest-remainder schedule that sums exactly to ``L * b``.
        n_layers: set from the model config when the cache is built.
    """

    beta: float = 20.0
    exact_total: bool = False
    n_layers: int = 0

    layer_class = _PyramidLayer

    def make_layer(self, layer_idx, config):
        self.n_layers = config.num_hidden_layers
        return super().make_layer(layer_idx, config)
