"""HybridKV: Hybrid KV Cache Compression for Efficient Multimodal Large Language Model Inference.

A reference implementation of the described method, not a reproduction of the authors' code
(there is none public, and only the abstract is available to us). The abstract's idea: heads
of a multimodal model behave differently, so one compression rule for all of them wastes
budget. HybridKV (1) types every attention head as *static* or *dynamic* by its text-centric
attention, (2) allocates the KV budget top-down, model -> layers -> heads, and (3) compresses
static heads by text-prior pruning (text first, then the best visual entries) and serves
dynamic heads by chunk-wise retrieval: their visual entries are cut into chunks that never
cross an image boundary, and at every decode step the chunks whose key bounds promise the
highest attention for the current query are fetched (Quest's bound). Budgets are per KV head,
stored for real (one tensor per head), and the dynamic heads' pools live in a cold store
(``memory_mode="offload"``) or stay resident capped at ``pool_cap`` times the budget
(``memory_mode="resident_pool"``).

The full design (what the abstract states, every choice we made and why, invariants, byte
accounting, benchmark protocol) is this package's ``README.md``; a mark such as "§4.5" in the
code names one of its numbered sections. Modules: :mod:`.plan` (pure tensor functions),
:mod:`.layer` (the cache and its layers), this file (the registered configuration).

Paper: arXiv 2604.05887

Upstream: none public.

Example:

    >>> from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
    >>> from reference_impls.decoding.hybridkv import HybridKV
    >>> model = tiny_qwen25vl(seed=0, num_layers=2)
    >>> inputs = tiny_inputs(model, grids=((8, 8),), prompt_before=10, prompt_after=12)
    >>> method = HybridKV(budget=0.3, window=6, chunk_size=4, typing="rank")
    >>> with method(model):
    ...     out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    >>> method.cache.plan["static"].shape  # (layers, KV heads)
    torch.Size([2, 2])
    >>> report = method.cache.byte_report()
    >>> report["resident_bytes"] < report["full_bytes"]
    True

Deviations / guesses (ours, every one a named parameter; README §5 gives each default's
provenance): the TCA formula and ``tau = 0.5`` (``typing``, ``tau``, ``rho``,
``tca_exclude_sink``); online typing per request by default (``types_source``; offline masks via
:func:`calibrate_head_types`); SnapKV window scores (``window``, ``window_min``, ``pool_kernel``)
feed every stage; the two allocation levels with floors ``alpha`` and score normalisation across
layers; dynamic heads keep text resident and leave room for one chunk (a head whose budget is
below ``r + chunk_size`` can retrieve nothing: chunks are never cut to fit, since smaller chunks
cost more metadata); ``chunk_size = 16``, ``refresh_every = 1``, ``group_agg = "max"`` from
Quest; the ``offload`` default (it matches the survey's reported byte ratios, resident mode does
not); batch size 1; the whole prefill runs uncompressed and the cache is compressed once after it
(prefill peak memory is the full cache's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from reference_impls.decoding.cache import KVCacheMethod
from reference_impls.decoding.hybridkv.layer import HybridKVCache, HybridKVLayer
from reference_impls.decoding.hybridkv.plan import GroupAgg, HeadTyping, save_head_types, type_heads
from reference_impls.registry import register

__all__ = ["HybridKV", "HybridKVLayer", "HybridKVCache", "calibrate_head_types"]

TypesSource = Literal["online", "offline"]
MemoryMode = Literal["offload", "resident_pool"]


@register("hybridkv", family="kv-head-level", kind="kv-cache")
@dataclass
class HybridKV(KVCacheMethod):
    """HybridKV configuration (README §5 gives every default's provenance; all but ``budget`` are ours).

    Holds configuration only: the cache of the last request is run state
    (:attr:`KVCacheMethod.cache`, not an ``__init__`` argument), so copies made with
    :func:`dataclasses.replace` carry none of it.

    Args:
        budget: a float is the ratio beta of the prompt length, an int the absolute mean number of
            prompt entries per KV head (§4.3 step 1); reserved entries count inside it.
        n_sink: leading positions kept in every head (attention sinks, §3).
        window: observation window ``w``: the last text positions, whose queries score every
            entry (§4.0, §4.1); kept in every head.
        window_min: fewer text tokens than this after the last visual token and the window is
            simply the last ``window`` positions (logged, §4.0).
        pool_kernel: width of the average pool that smooths the window scores (§4.1); 1 turns it off.
        typing: ``"threshold"`` (TCA >= ``tau`` is static), ``"rank"`` (the ``rho`` fraction of
            heads with the lowest TCA is dynamic), ``"all_static"``, ``"all_dynamic"`` (§4.2).
        tau: TCA threshold of ``typing="threshold"``.
        rho: fraction of dynamic heads of ``typing="rank"``.
        tca_exclude_sink: leave sink positions out of the TCA ratio (numerator and denominator).
        types_source: ``"online"`` types the heads per request from its prefill; ``"offline"``
            reads the JSON mask at ``types_path`` (written by :func:`calibrate_head_types`).
        types_path: the offline mask; required with ``types_source="offline"``.
        alpha: floor fraction of the layer and head allocations (§4.3 steps 2-3).
        full_layers: layers kept uncompressed; each costs ``N`` entries per head of the total.
        chunk_size: most positions per retrieval chunk of a dynamic head (§4.5 step 3).
        refresh_every: re-select the chunks every this many decode steps, reusing the last
            selection in between (§4.5 step 5).
        group_agg: how the bounds of a KV head's query heads combine: ``"max"`` or ``"mean"``.
        memory_mode: ``"offload"`` keeps the retrieval pools in a cold store (host memory) and
            copies the chosen chunks per step; ``"resident_pool"`` keeps them on the compute
            device (§4.6).
        pool_cap: in ``"resident_pool"`` mode, a pool keeps at most ``pool_cap`` times its head's
            budget (the highest-scored entries); ``None`` keeps it whole (Quest-like).
        merge_evicted: LOOK-M-style averaging of evicted visual entries into their most similar
            kept key, in static heads (§4.4).
        static_max_generated: cap on the generated entries a static head keeps (oldest dropped
            first); ``None``: no cap (§4.4).
    """

    budget: float | int = 0.1
    n_sink: int = 4
    window: int = 32
    window_min: int = 8
    pool_kernel: int = 7
    typing: HeadTyping = "threshold"
    tau: float = 0.5
    rho: float = 0.25
    tca_exclude_sink: bool = True
    types_source: TypesSource = "online"
    types_path: str | None = None
    alpha: float = 0.2
    full_layers: tuple[int, ...] = field(default_factory=tuple)
    chunk_size: int = 16
    refresh_every: int = 1
    group_agg: GroupAgg = "max"
    memory_mode: MemoryMode = "offload"
    pool_cap: int | None = 4
    merge_evicted: bool = False
    static_max_generated: int | None = None

    def __post_init__(self):
        # Literal types document the choices; the check makes a typo fail at construction.
        for name, kind in (
            ("typing", HeadTyping),
            ("types_source", TypesSource),
            ("memory_mode", MemoryMode),
            ("group_agg", GroupAgg),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name} must be one of {get_args(kind)}, got {getattr(self, name)!r}")
        if self.types_source == "offline" and not self.types_path:
            raise ValueError("types_source='offline' needs types_path (a mask written by calibrate_head_types)")
        if not 0 <= self.alpha <= 1 or not 0 <= self.tau <= 1 or not 0 <= self.rho <= 1:
            raise ValueError("alpha, tau and rho must lie in [0, 1]")
        if self.chunk_size < 1 or self.refresh_every < 1 or self.window < 1:
            raise ValueError("chunk_size, refresh_every and window must be >= 1")

    layer_class = HybridKVLayer

    def cache_class(self):
        return HybridKVCache

    def make_cache(self, model, input_ids=None, mm_token_type_ids=None):
        if input_ids is None and mm_token_type_ids is None:
            raise ValueError(
                "HybridKV needs the prompt's input_ids (or mm_token_type_ids) to find text and visual positions"
            )
        return super().make_cache(model, input_ids, mm_token_type_ids)


@torch.no_grad()
def calibrate_head_types(
    model,
    samples: list[dict],
    method: HybridKV,
    path: str | Path | None = None,
    *,
    model_id: str = "",
    calibration: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline typing (§4.2): mean TCA over calibration prompts, thresholded/ranked as ``method`` says.

    Args:
        model: a Qwen2.5-VL model.
        samples: model inputs (batch 1 each, with ``input_ids`` and ``mm_token_type_ids``).
        method: supplies window, sinks and typing parameters (it may have run before).
        path: where to write the JSON mask (optional).
        model_id, calibration: stored in the mask to say what it was computed on.

    Returns:
        ``(tca (L, H), static (L, H))``.
    """
    tcas = []
    probe = dataclasses.replace(method, types_source="online", types_path=None)
    with probe(model):
        for inputs in samples:
            cache = probe.make_cache(model, inputs["input_ids"], inputs.get("mm_token_type_ids"))
            model(**inputs, cache=cache, use_cache=True)
            tcas.append(cache.plan["tca"])
    tca = torch.stack(tcas).mean(0)
    static = type_heads(tca, method.typing, method.tau, method.rho)
    if path is not None:
        save_head_types(
            path, tca, static, model_id=model_id, tau=method.tau, calibration=calibration or f"{len(samples)} prompts"
        )
    return tca, static
