"""LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference.

In multimodal prompts the model reads the image mostly while it processes the prompt; during
generation it leans on the text. LOOK-M therefore compresses the cache once, after the prefill,
with a text-prior rule: entries are ranked by the attention they accumulated over all prompt
queries (H2O-style), but text entries outrank visual ones, so the budget fills with the recent
window and text first and visual entries take the rest; text is never evicted. Evicted visual
entries are not simply dropped: each one similar enough to a kept key is merged into it, so
some of its content survives.

Paper: arXiv 2406.18139

Upstream: SUSTechBruce/LOOK-M LLaVA-mix_merge_v1/llava/model/kv_token_merge/modify_llama.py
@ 0b9c09df55e614cd4070997ab21dc04ca2c238b5 (``TextAVGMergeKVCache_LayerWise``).

Example::

    from reference_impls.decoding.lookm import LookM
    with LookM(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

The default follows the reference code: the last ``window`` entries and the ``budget - window``
best by the text-prior order are kept, **and every other text entry stays too** (upstream keeps
all entries whose biased score is ``>= 0``, i.e. every text entry), so the cache exceeds the
budget when the prompt has more text than the budget allows. The evicted (visual) entries are
merged by :func:`~reference_impls.decoding.kv_scores.lookm_merge`: the ``j``-th evicted entry of
each head goes into its most cosine-similar kept key when its best similarity, averaged over
the heads, is at least the mean; each kept entry becomes the mean of itself and what joined it
(keys and values alike).

Deviations / upstream bug: the reference ``scatter_reduce`` pairs the *filtered* targets with
the *first* ``F`` evicted rows (``src`` is the unfiltered tensor), which merges the wrong
entries; we merge the filtered rows, which is what the filter is for. ``literal_scatter=True``
reproduces the reference pairing. ``drop_evicted_text=True`` keeps exactly ``budget`` entries
(evicted text is then a merge candidate like visual entries; our earlier rule dropped it
unmerged). The text prior is a strict order (upstream subtracts 65516 from visual scores, which
in fp16 saturates and can tie all visual entries); window 32 entries instead of upstream's
``recent_ratio`` of the prompt; on GQA models the scores are summed over the query heads of each
KV head (the reference code supports multi-head attention only, as H2O's). Modality comes from
the prompt's token ids; without them every entry counts as text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod
from reference_impls.decoding.kv_scores import accumulated_attention, lookm_merge, top_per_row
from reference_impls.registry import register

__all__ = ["LookM", "text_prior_scores", "lookm_kept"]


def text_prior_scores(scores: torch.Tensor, text: torch.Tensor, window: int) -> torch.Tensor:
    """Scores whose order is: window, then text by score, then visual by score. ``(H, N)`` -> ``(H, N)``."""
    s = scores.float().clone()
    offset = s.max() - s.min() + 1.0  # lifts every text score above every visual one
    s[:, text.to(s.device)] += offset
    s[:, s.shape[1] - window :] = float("inf")
    return s


def lookm_kept(
    scores: torch.Tensor, text: torch.Tensor, budget: int, window: int, keep_all_text: bool = True
) -> torch.Tensor:
    """``(H, N)`` bool kept mask: the ``budget`` best by the text prior, plus (default) every text entry."""
    prior = text_prior_scores(scores, text, window)
    kept = torch.zeros_like(prior, dtype=torch.bool).scatter_(1, top_per_row(prior, budget), True)
    if keep_all_text:
        kept |= text.to(kept.device)[None, :]
    return kept


class _LookMLayer(CompressedLayer):
    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        m = self.method
        layout = self.cache.layout
        text = torch.ones(n, dtype=torch.bool) if layout is None else ~layout.visual
        scores = accumulated_attention(query, self.keys, scaling)  # (H, N)
        kept = lookm_kept(scores, text, b, min(m.window, b), not m.drop_evicted_text)
        index = torch.nonzero(kept)[:, 1].view(kept.shape[0], -1)  # (H, K) sorted
        if m.merge:
            keys, values = lookm_merge(self.keys[0], self.values[0], kept, m.literal_scatter)
            self.keys = self.keys.clone()
            self.values = self.values.clone()
            gather = index[..., None].expand(-1, -1, keys.shape[-1])
            self.keys[0].scatter_(1, gather, keys)
            self.values[0].scatter_(1, gather, values)
        self.keep(index)


@register("lookm", family="kv-token-level", kind="kv-cache")
@dataclass
class LookM(KVCacheMethod):
    """LOOK-M configuration.

    Args:
        budget: entries kept per KV head (float: fraction of the prompt; int: count), window
            included; text beyond it is kept too unless ``drop_evicted_text``.
        window: most recent prompt entries always kept.
        merge: merge evicted visual entries into their most similar kept entry.
        drop_evicted_text: keep exactly ``budget`` entries (evicted text dropped, not merged).
        literal_scatter: reproduce the reference code's mismatched merge pairing.
    """

    budget: float | int = 0.1
    window: int = 32
    merge: bool = True
    drop_evicted_text: bool = False
    literal_scatter: bool = False

    layer_class = _LookMLayer
