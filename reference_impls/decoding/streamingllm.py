"""StreamingLLM: Efficient Streaming Language Models with Attention Sinks.

The first few tokens of a sequence collect a large share of attention whatever their content
("attention sinks"); dropping them breaks a sliding-window cache. StreamingLLM therefore keeps a
handful of sink entries plus a window of the most recent ones, and evicts the oldest non-sink
entry each time a token is added, so the cache size stays fixed however long the generation.
No scores are needed.

Paper: arXiv 2309.17453

Upstream: mit-han-lab/streaming-llm streaming_llm/kv_cache.py @ d729b3ffc947caca63fc0f7644b7468ca2d50881
(``StartRecentKVCache``): the first ``start_size`` entries plus the last ``recent_size``.

Example::

    from reference_impls.decoding.streamingllm import StreamingLLM
    with StreamingLLM(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

Deviations / guesses: the original re-assigns positions *within the cache*; our keys are stored
after RoPE, so entries keep their original (M-RoPE) positions. The budget includes the sinks and
covers generated tokens too: an int is a fixed cache size; a float is a fraction of the current
logical length, so the cache grows by one entry every ``1 / budget`` generated tokens and budget
1.0 is the full cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod, resolve_budget
from reference_impls.registry import register

__all__ = ["StreamingLLM", "sink_window_index"]


def sink_window_index(n: int, budget: int, n_sink: int) -> torch.Tensor:
    """Indices kept out of ``n`` ordered entries: the first ``n_sink`` and the most recent rest."""
    n_sink = min(n_sink, budget)
    return torch.cat([torch.arange(n_sink), torch.arange(n - (budget - n_sink), n)])


class _StreamingLayer(CompressedLayer):
    def __init__(self, layer_idx: int, method: StreamingLLM):
        super().__init__(layer_idx, method)
        self.size = 0

    def _trim(self):
        n = self.physical_length()
        self.size = resolve_budget(self.method.budget, self.logical_length, minimum=self.method.n_sink + 1)
        if n > self.size:
            index = sink_window_index(n, self.size, self.method.n_sink).to(self.device)
            self.keep(index.expand(self.keys.shape[1], -1))

    def after_prefill(self, module, query, scaling):
        self._trim()

    def after_decode(self, module, query, scaling):
        self._trim()


@register("streamingllm", family="kv-token-level", kind="kv-cache")
@dataclass
class StreamingLLM(KVCacheMethod):
    """StreamingLLM configuration.

    Args:
        budget: cache size per KV head (float: fraction of the logical length; int: count), sinks included.
        n_sink: number of initial entries always kept.
    """

    budget: float | int = 0.1
    n_sink: int = 4

    layer_class = _StreamingLayer
