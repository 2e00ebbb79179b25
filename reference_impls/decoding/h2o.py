"""H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models.

A small set of tokens ("heavy hitters") receives most of the attention over a whole generation.
H2O keeps, per head, the entries with the largest attention accumulated from all queries so far
plus the most recent entries; each time a token is added, the non-recent entry with the least
accumulated attention is evicted, so the cache size stays fixed. Scores are updated with the
attention of every decode step.

Paper: arXiv 2306.14048

Upstream: FMInference/H2O h2o_hf/utils_real_drop/modify_llama.py @ 0ee6a85948a774e9822478551718a76053359f68
(``H2OKVCache_LayerWise``); the same rule is ``H2OKVCluster`` in Zefan-Cai/KVCache-Factory
pyramidkv/pyramidkv_utils.py @ 5fb995d72366fff6d00620cd33fad99b38725907 for the prefill.

Example::

    from reference_impls.decoding.h2o import H2O
    with H2O(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

The default matches the reference code step by step (accumulated column sums of every query's
attention, top ``budget - recent`` of the non-recent entries plus the ``recent`` newest; the
evicted entries' scores are dropped with them).

Deviations / guesses: the prefill scores are computed block-wise from post-RoPE q/k in float32,
summed over the query heads of each KV head (the reference code supports multi-head attention
only: its mask shapes fail under GQA); the budget is split evenly
between heavy hitters and recent entries (``recent_ratio = 0.5``, the paper's common setting);
an int budget is a fixed cache size, a float budget a fraction of
the current logical length (budget 1.0 is the full cache); the accumulated scores are kept as float32 metadata and counted in the resident bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod, resolve_budget
from reference_impls.decoding.kv_scores import accumulated_attention, top_per_row
from reference_impls.registry import register

__all__ = ["H2O", "heavy_recent_index"]


def heavy_recent_index(scores: torch.Tensor, budget: int, recent: int) -> torch.Tensor:
    """``(H, budget)`` kept indices: the last ``recent`` entries plus the best-scored others."""
    h, n = scores.shape
    recent = min(recent, budget)
    heavy = top_per_row(scores[:, : n - recent], budget - recent)
    return torch.cat([heavy, torch.arange(n - recent, n, device=scores.device).expand(h, -1)], dim=1)


class _H2OLayer(CompressedLayer):
    def __init__(self, layer_idx: int, method: H2O):
        super().__init__(layer_idx, method)
        self.scores: torch.Tensor | None = None  # (H, S) float32 accumulated attention
        self.size = 0

    def keep(self, index):
        index = index.sort(dim=-1).values
        super().keep(index)
        self.scores = self.scores.gather(1, index)

    def _trim(self):
        self.size = resolve_budget(self.method.budget, self.logical_length, minimum=2)
        if self.physical_length() > self.size:
            recent = int(round(self.size * self.method.recent_ratio))
            self.keep(heavy_recent_index(self.scores, self.size, recent))

    def after_prefill(self, module, query, scaling):
        self.scores = accumulated_attention(query, self.keys, scaling)
        self._trim()

    def decode_attention(self, module, query, key, value, scaling):
        h, groups = key.shape[1], query.shape[1] // key.shape[1]
        q = query.shape[2]
        logits = torch.einsum("hqd,hsd->hqs", query[0].float(), key[0].float().repeat_interleave(groups, 0)) * scaling
        s = key.shape[2]
        visible = torch.ones(q, s, dtype=torch.bool, device=key.device)
        visible[:, s - q :] = torch.tril(torch.ones(q, q, dtype=torch.bool, device=key.device))
        probs = logits.masked_fill(~visible, float("-inf")).softmax(-1)  # (Hq, q, S)
        new = torch.zeros(h, q, device=key.device)
        self.scores = torch.cat([self.scores, new], dim=1) + probs.sum(1).view(h, groups, s).sum(1)
        out = torch.einsum("hqs,hsd->hqd", probs, value[0].float().repeat_interleave(groups, 0))
        return out.to(query.dtype).transpose(0, 1)[None].contiguous()  # (1, q, Hq, D)

    def after_decode(self, module, query, scaling):
        self._trim()

    def resident_tensors(self):
        yield from super().resident_tensors()
        yield self.scores


@register("h2o", family="kv-token-level", kind="kv-cache")
@dataclass
class H2O(KVCacheMethod):
    """H2O configuration.

    Args:
        budget: cache size per KV head (float: fraction of the logical length; int: count).
        recent_ratio: share of the budget reserved for the most recent entries.
    """

    budget: float | int = 0.1
    recent_ratio: float = 0.5

    layer_class = _H2OLayer
