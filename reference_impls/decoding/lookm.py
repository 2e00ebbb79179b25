"""LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference.

In multimodal prompts the model reads the image mostly while it processes the prompt; during
generation it leans on the text. LOOK-M therefore compresses the cache once, after the prefill,
with a text-prior rule: entries are ranked by the attention they accumulated over all prompt
queries (H2O-style), but text entries outrank visual ones, so the budget fills with the recent
window and text first and visual entries take the rest. Evicted visual entries are not simply
dropped: each is merged into the kept key it is most similar to, so some of its content survives.

Paper: arXiv 2406.18139

Example::

    from reference_impls.decoding.lookm import LookM
    with LookM(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

Deviations / guesses: the text prior is a strict order (window, then text, then visual, each by
score) rather than LOOK-M's score bias; merging is the "average" variant (each kept entry becomes
the mean of itself and the evicted visual entries whose keys are most cosine-similar to it; keys
and values alike), and evicted text entries are dropped; window 32. Modality comes from the
prompt's token ids; without them every entry counts as text (plain H2O at prefill).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod
from reference_impls.decoding.kv_scores import accumulated_attention, merge_evicted, top_per_row
from reference_impls.registry import register

__all__ = ["LookM", "text_prior_scores"]


def text_prior_scores(scores: torch.Tensor, text: torch.Tensor, window: int) -> torch.Tensor:
    """Scores whose order is: window, then text by score, then visual by score. ``(H, N)`` -> ``(H, N)``."""
    s = scores.float().clone()
    offset = s.max() - s.min() + 1.0  # lifts every text score above every visual one
    s[:, text.to(s.device)] += offset
    s[:, s.shape[1] - window :] = float("inf")
    return s


class _LookMLayer(CompressedLayer):
    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        layout = self.cache.layout
        text = torch.ones(n, dtype=torch.bool) if layout is None else ~layout.visual
        scores = text_prior_scores(accumulated_attention(query, self.keys, scaling), text, min(self.method.window, b))
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices.cpu()  # (H, N)
        kept = top_per_row(scores, b)
        if self.method.merge:
            for h in range(self.keys.shape[1]):
                self.keys[0, h], self.values[0, h] = merge_evicted(self.keys[0, h], self.values[0, h], order[h, :b], order[h, b:], text)
        self.keep(kept)


@register("lookm", family="kv-token-level", kind="kv-cache")
@dataclass
class LookM(KVCacheMethod):
    """LOOK-M configuration.

    Args:
        budget: entries kept per KV head (float: fraction of the prompt; int: count), window included.
        window: most recent prompt entries always kept.
        merge: merge evicted visual entries into their most similar kept entry.
    """

    budget: float | int = 0.1
    window: int = 32
    merge: bool = True

    layer_class = _LookMLayer
