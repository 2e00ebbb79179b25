"""PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling.

Attention spreads widely in the lower layers and funnels onto a few tokens in the upper ones, so
PyramidKV gives lower layers more KV entries than upper ones: per-layer budgets fall linearly
with depth while the total stays that of a uniform budget. Inside each layer the entries are
chosen as in SnapKV (observation-window attention, pooled).

Paper: arXiv 2406.02069

Example::

    from reference_impls.decoding.pyramidkv import PyramidKV
    with PyramidKV(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

Deviations / guesses: the schedule is the KVCache-Factory one (``min = (b - w) / beta``,
``max = 2 (b - w) - min``, ``beta = 20``), rounded by largest remainder so that the layer budgets
sum exactly to ``L * b``, and clipped at the prompt length with the excess moved to the smallest
layers; the window is shortened to the layer budget when a layer gets fewer entries than it.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.decoding.cache import resolve_budget
from reference_impls.decoding.kv_scores import pyramid_budgets
from reference_impls.decoding.snapkv import SnapKV, SnapKVLayer
from reference_impls.registry import register

__all__ = ["PyramidKV", "layer_budgets"]


def layer_budgets(method: "PyramidKV", n_layers: int, n: int) -> list[int]:
    """Per-layer entries per KV head for a prompt of ``n`` tokens (sum ``n_layers * b``)."""
    b = resolve_budget(method.budget, n)
    window = min(method.window, b)
    return pyramid_budgets(n_layers, b, window, method.beta, cap=n)


class _PyramidLayer(SnapKVLayer):
    def layer_budget(self, n):
        return layer_budgets(self.method, self.method.n_layers, n)[self.layer_idx]


@register("pyramidkv", family="kv-layer-level", kind="kv-cache")
@dataclass
class PyramidKV(SnapKV):
    """PyramidKV configuration (SnapKV's fields plus ``beta``, the pyramid steepness)."""

    beta: float = 20.0
    n_layers: int = 0

    layer_class = _PyramidLayer

    def make_layer(self, layer_idx, config):
        self.n_layers = config.num_hidden_layers
        return super().make_layer(layer_idx, config)
