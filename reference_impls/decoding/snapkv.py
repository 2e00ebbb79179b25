"""SnapKV: LLM Knows What You are Looking for Before Generation.

The queries at the end of the prompt (the *observation window*, normally the question) already
show which earlier positions generation will read. SnapKV scores every prompt position by the
attention those window queries pay to it, smooths the scores with a 1-D pooling so that
neighbours of important tokens survive together, and keeps, once at the end of the prefill, the
top entries of each head plus the window itself. Generated tokens are appended unchanged.

Paper: arXiv 2404.14469

Upstream: FasterDecoding/SnapKV snapkv/monkeypatch/snapkv_utils.py @ 557aff1c6d018d8d3021cb511a6080c1164083da
(``SnapKVCluster.update_kv``; the K/V repeat before it is in snapkv/monkeypatch/llama_hijack_4_37.py
@ 395b54dce7866cb2cffdebdc9f641fd0821a2c30). The same rule is ``SnapKVCluster`` in
Zefan-Cai/KVCache-Factory pyramidkv/pyramidkv_utils.py @ 5fb995d72366fff6d00620cd33fad99b38725907.

Example::

    from reference_impls.decoding.snapkv import SnapKV
    with SnapKV(budget=0.2)(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)

The default is the upstream rule with the configuration of SnapKV's own LongBench runs
(experiments/LongBench/scripts/run_longbench.sh @ 82135ce2cc60f212a9ba918467f3d9c8134e163f runs
``ablation_c4096_w32_k7_maxpool``): window 32, kernel 7, **max** pooling. (KVCache-Factory's
``init_snapkv`` defaults differ: window 32, kernel 5, average pooling; ``pooling="avg",
pool_kernel=5`` gives that.) Scores are the window rows' mean attention to the positions
*before* the window, pooled with the zero padding counted (it matters for average pooling
only), and each head keeps its ``budget - window`` best positions plus the window.

GQA: the reference code repeats K/V to the query heads *before* compressing, so every query
head selects its own entries and the compressed cache holds ``G = Hq / H`` copies of each KV
head (``gqa="repeat"``, the default: the resident bytes of this method are ``G`` times those of
a per-KV-head method with the same budget, and our byte report says so). ``gqa="mean"`` scores
each KV head by the mean over its query heads and stores one selection per KV head (the
``gqa_support`` mode of FFY0/AdaKV's SnapKV, and kvpress's rule).

Deviations: scores are computed in float32 from post-RoPE q/k inside our attention function
(upstream casts the probabilities to the model dtype, which can create ties in bf16); the
window rows are averaged (upstream sums; the order is the same); ties keep the lower
position; when the budget is smaller than the window the window is shortened to the budget
(upstream asserts); with ``gqa="repeat"`` a prompt that is not compressed (budget >= prompt)
is not repeated either.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.decoding.cache import CompressedCache, CompressedLayer, KVCacheMethod
from reference_impls.decoding.kv_scores import observation_scores, top_per_row
from reference_impls.registry import register

__all__ = ["SnapKV", "SnapKVLayer"]


class SnapKVLayer(CompressedLayer):
    """Keeps the ``budget`` best entries per head once, after the prefill (per query head with ``gqa="repeat"``)."""

    kv_heads = 0  # KV heads of the model; the stored heads are more after a GQA repeat

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self.kv_heads = key_states.shape[1]

    def after_prefill(self, module, query, scaling):
        n = self.physical_length()
        b = self.layer_budget(n)
        if b >= n:
            return
        m = self.method
        per_query_head = m.gqa == "repeat"
        window = min(m.window, b)
        scores = observation_scores(query, self.keys, window, scaling, m.pool_kernel, m.pooling, per_query_head)
        if per_query_head:  # store one copy of each KV head per query head, as the reference code does
            groups = query.shape[1] // self.kv_heads
            self.keys = self.keys.repeat_interleave(groups, dim=1)  # (1, Hq, N, D)
            self.values = self.values.repeat_interleave(groups, dim=1)
            self.positions = self.positions.repeat_interleave(groups, dim=0)
        self.keep(top_per_row(scores, b))  # (H', b)

    def _append(self, k, v, pos):
        stored = self.keys.shape[1] if self.keys.numel() else k.shape[1]
        if stored != k.shape[1]:  # repeated storage: new tokens go to every query head of their group
            k = k.repeat_interleave(stored // k.shape[1], dim=1)
            v = v.repeat_interleave(stored // v.shape[1], dim=1)
        return super()._append(k, v, pos)


class SnapKVCache(CompressedCache):
    """A :class:`CompressedCache` whose full-cache reference counts KV heads, not the repeated stored heads."""

    def byte_report(self):
        report = super().byte_report()
        layer = self.layers[0]
        stored = len(layer.head_lengths())
        if getattr(layer, "kv_heads", 0) and stored:
            report["full_bytes"] = report["full_bytes"] * layer.kv_heads // stored
        return report


@register("snapkv", family="kv-token-level", kind="kv-cache")
@dataclass
class SnapKV(KVCacheMethod):
    """SnapKV configuration.

    Args:
        budget: entries kept per head (float: fraction of the prompt; int: count), window included.
        window: observation window (last prompt queries).
        pool_kernel: width of the score smoothing.
        pooling: ``"max"`` (SnapKV's configs) or ``"avg"`` (KVCache-Factory's default).
        gqa: ``"repeat"`` (upstream: select per query head, store G copies) or ``"mean"``
            (select per KV head from the group-mean scores).
    """

    budget: float | int = 0.1
    window: int = 32
    pool_kernel: int = 7
    pooling: str = "max"
    gqa: str = "repeat"

    layer_class = SnapKVLayer

    def __post_init__(self):
        if self.gqa not in ("repeat", "mean"):
            raise ValueError(f"gqa must be 'repeat' or 'mean', got {self.gqa!r}")

    def cache_class(self) -> type[CompressedCache]:
        return SnapKVCache
