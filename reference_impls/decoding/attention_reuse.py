"""Cross-layer attention reuse: later layers apply an earlier layer's attention map to their own values.

**Attention reuse across layers (our reconstruction of a survey category)**

Attention maps of neighbouring layers are often similar, so a layer can borrow them instead of
recomputing them. Layers are split into *anchors*, which compute their attention probabilities
as usual (``softmax(QK^T / sqrt(d))``), and *sharers*, which skip ``QK^T`` and the softmax and
multiply the probabilities of their source anchor by their **own** values, then go through their
own ``o_proj``. GQA: query head ``h`` of a sharer uses query head ``h`` of its anchor (the model
has one head layout for all layers) and reads its own value head ``h // G`` (``G`` query heads
per KV head), exactly like a normal layer. With ``columns="visual"`` a sharer borrows only the
anchor's probabilities on visual-token columns (and their total mass ``m``) and computes its own
softmax over the text columns, scaled by ``1 - m``, so only ``QK^T`` against visual keys is
skipped. Reuse can be limited to the prefill, to decode steps, or applied to both.

Paper: arXiv 2604.05546 (the seed survey names the category "attention reuse"; the rule here is
our reconstruction, no paper of the family is in our collection).

Upstream: none. No code of a paper of this family was read, so there is no parity test; the
tests check the sharers against a direct computation (anchor probabilities times own values)
and that no sharer reproduces the model exactly.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.decoding.attention_reuse import AttentionReuse
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> inputs = tiny_inputs(model)
    >>> method = AttentionReuse(share_every=2)         # layers 0, 2 compute; 1, 3 reuse
    >>> method.reuse_map(4)
    {1: 0, 3: 2}
    >>> with method(model):
    ...     out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    >>> method.stats["reused_layers"]
    [1, 3]

Deviations:
    - Everything is our choice (no paper of the family was read): which layers are anchors
      (``share_every``, an explicit ``anchors`` list, or any ``sources`` map), per-query-head
      sharing (no averaging inside a GQA group), the visual-column blend, and the phases.
    - Sharers still run their Q, K and V projections and still write K and V to the cache (the
      module's own forward computes them before the attention function is called). So the
      saving is ``QK^T`` + softmax of the sharers only; skipping the Q/K projections, and the
      sharers' cached keys when reuse applies to every column in every phase, is possible
      but not done here (:func:`attention_flops` counts what it would save).
    - Anchors whose map is reused materialise their probabilities (eager math) instead of
      calling the fused sdpa kernel, and keep them until their last sharer ran:
      ``stats["peak_prob_bytes"]`` records that memory. Anchors nobody reuses run sdpa
      unchanged, so with no sharer the model is bit-identical to the unpatched one.
    - "prefill" means a forward on an empty cache (query length == key length), "decode" every
      later forward, including multi-token chunks. Requires the text model to run ``sdpa``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from reference_impls.common.architectures import adapter_for
from reference_impls.decoding._speculative_prompt import DecodeResult
from reference_impls.registry import register

__all__ = [
    "ATTENTION_NAME",
    "AttentionReuse",
    "resolve_sources",
    "attention_probs",
    "reuse_attention",
    "blend_probs",
    "attention_flops",
    "row_blocks",
]

ATTENTION_NAME = "atlas_attention_reuse"
PHASES = ("prefill", "decode", "both")


def resolve_sources(
    n_layers: int,
    *,
    share_every: int = 1,
    anchors: Sequence[int] | None = None,
    sources: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """``{sharer: anchor}`` for ``n_layers`` layers (precedence: ``sources``, ``anchors``, ``share_every``).

    ``share_every=k``: layers ``0, k, 2k, ...`` are anchors and each other layer reuses the
    nearest anchor before it (``k=1``: no reuse). ``anchors``: the explicit anchor list, same
    rule. ``sources``: any map with ``source < sharer``; chains resolve to the computing layer.
    """
    if sources is None:
        anchor_set = set(range(0, n_layers, share_every)) if anchors is None else set(anchors)
        if 0 not in anchor_set:
            raise ValueError("layer 0 must be an anchor (no earlier map exists)")
        sources = {l: max(a for a in anchor_set if a < l) for l in range(n_layers) if l not in anchor_set}
    resolved = {}
    for target, source in sorted(sources.items()):
        if not 0 <= source < target < n_layers:
            raise ValueError(f"layer {target} cannot reuse layer {source} (need 0 <= source < target < {n_layers})")
        resolved[target] = resolved.get(source, source)
    return resolved


def _bool_mask(attention_mask: torch.Tensor | None, q: int, s: int, device) -> torch.Tensor:
    """``(B|1, 1, q, S)`` bool, True = attend; ``None`` means causal with the queries last."""
    if attention_mask is None:
        return torch.ones(q, s, dtype=torch.bool, device=device).tril(s - q)[None, None]
    return attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0


def row_blocks(q: int, s: int, block: int) -> list[tuple[int, int, int]]:
    """``(first row, end row, key columns)`` of causal query blocks (the ``q`` queries are the last of ``s`` positions).

    Row ``i`` sits at position ``s - q + i`` and sees keys ``< s - q + i + 1``, so a block ending
    at row ``r`` needs only the first ``s - q + r`` keys. ``block <= 0`` or ``>= q``: one block.
    """
    if block <= 0 or block >= q:
        return [(0, q, s)]
    return [(r, min(r + block, q), s - q + min(r + block, q)) for r in range(0, q, block)]


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, scaling: float, mask: torch.Tensor, block: int = 0
) -> torch.Tensor:
    """Softmax attention probabilities, keys repeated over each GQA group, in causal query blocks.

    Args:
        query: ``(B, Hq, q, D)`` post-RoPE; key: ``(B, H, S, D)``; mask: ``(B|1, 1, q, S)`` bool.
        block: query rows per block (see :func:`row_blocks`); keys past a block are never scored.

    Returns:
        ``(B, Hq, q, S)`` in the query dtype (softmax in float32; a fully masked row is uniform).
    """
    (b, hq, q, d), (h, s) = query.shape, key.shape[1:3]
    blocks = row_blocks(q, s, block)
    if len(blocks) == 1:  # one block (decode steps, short prompts): group heads, no key copies
        logits = (query.reshape(b, h, hq // h * q, d) @ key.transpose(-1, -2)).view(b, hq, q, s)
        logits = logits.float().mul_(scaling).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return logits.softmax(dim=-1).to(query.dtype)
    k = key.repeat_interleave(hq // h, dim=1)  # (B, Hq, S, D)
    probs = query.new_zeros(b, hq, q, s)
    for r0, r1, c in blocks:
        logits = (query[:, :, r0:r1] @ k[:, :, :c].transpose(-1, -2)).float().mul_(scaling)  # (B, Hq, r, c)
        logits.masked_fill_(~mask[:, :, r0:r1, :c], torch.finfo(torch.float32).min)
        probs[:, :, r0:r1, :c] = logits.softmax(dim=-1)
    return probs


def reuse_attention(probs: torch.Tensor, values: torch.Tensor, block: int = 0) -> torch.Tensor:
    """Apply (borrowed) probabilities ``(B, Hq, q, S)`` to values ``(B, H, S, D)``; query head ``h`` reads value head ``h // G``.

    ``block`` as in :func:`attention_probs` (probabilities past a block's keys are zero, skipped).

    Returns:
        ``(B, q, Hq, D)``, the layout transformers' attention functions return.
    """
    (b, hq, q, s), (h, d) = probs.shape, (values.shape[1], values.shape[3])
    blocks = row_blocks(q, s, block)
    if len(blocks) == 1:  # group heads: (B, H, G*q, S) @ (B, H, S, D), no value copies
        out = probs.to(values.dtype).reshape(b, h, hq // h * q, s) @ values
        return out.view(b, hq, q, d).transpose(1, 2).contiguous()
    v = values.repeat_interleave(hq // h, dim=1)  # (B, Hq, S, D)
    out = v.new_empty(b, hq, q, d)
    for r0, r1, c in blocks:
        out[:, :, r0:r1] = probs[:, :, r0:r1, :c].to(v.dtype) @ v[:, :, :c]
    return out.transpose(1, 2).contiguous()


def blend_probs(
    anchor: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    reused: torch.Tensor,
    scaling: float,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Anchor probabilities on the ``reused`` columns, the layer's own softmax (scaled by the rest) elsewhere.

    Only the own columns' logits are computed (keys gathered per batch row). Where a query may
    attend to no own column, the anchor's reused probabilities are renormalised to sum to 1.

    Args:
        anchor: ``(B, Hq, q, S)``; query ``(B, Hq, q, D)``; key ``(B, H, S, D)``;
        reused: ``(B, S)`` bool columns taken from the anchor; mask ``(B|1, 1, q, S)`` bool.

    Returns:
        ``(B, Hq, q, S)``, rows summing to 1.
    """
    out = anchor * reused[:, None, None, :]
    mass = out.sum(-1, keepdim=True)  # (B, Hq, q, 1)
    for b in range(anchor.shape[0]):
        own = (~reused[b]).nonzero()[:, 0]  # (T,)
        row_mask = mask[b if mask.shape[0] > 1 else 0][..., own]  # (1, q, T)
        if own.numel() == 0:
            has_own = torch.zeros(1, anchor.shape[2], 1, dtype=torch.bool, device=anchor.device)
        else:
            has_own = row_mask.any(-1, keepdim=True)  # (1, q, 1)
            p = attention_probs(query[b : b + 1], key[b : b + 1, :, own], scaling, row_mask[None])[0]  # (Hq, q, T)
            out[b, :, :, own] = p * (1 - mass[b]) * has_own
        out[b] = torch.where(has_own, out[b], out[b] / mass[b].clamp_min(torch.finfo(out.dtype).tiny))
    return out


def attention_flops(
    n_query: int,
    n_context: int,
    *,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    reused: bool = False,
    own_columns: int | None = None,
    block: int = 0,
) -> dict[str, int]:
    """Analytic FLOPs of one attention layer for ``n_query`` queries over ``n_context`` keys.

    Matmuls count ``2 m n k`` (biases not counted). Scores and ``PV`` cover the query-key pairs
    of :func:`row_blocks` (``block=0``: all ``n_query * n_context``, as eager attention
    computes them). Prefill of ``N`` tokens: ``(N, N)``; one decode step at context ``N``:
    ``(1, N + 1)``. A sharer (``reused``) has no ``qk``/``softmax``, except over ``own_columns``
    (the text columns of ``columns="visual"``, computed for every query). ``softmax`` counts 5
    FLOPs per score (max, subtract, exp, sum, divide; a convention, not measured).
    ``qk_proj_skippable`` is what skipping a sharer's Q and K projections would save (not done).
    """
    m, qd, kd = n_query, heads * head_dim, kv_heads * head_dim
    pairs = sum((r1 - r0) * c for r0, r1, c in row_blocks(n_query, n_context, block))
    scores = (0 if own_columns is None else m * own_columns) if reused else pairs
    flops = {
        "q_proj": 2 * m * hidden * qd,
        "k_proj": 2 * m * hidden * kd,
        "v_proj": 2 * m * hidden * kd,
        "qk": 2 * heads * scores * head_dim,
        "softmax": 5 * heads * scores,
        "pv": 2 * heads * pairs * head_dim,
        "o_proj": 2 * m * qd * hidden,
    }
    flops["total"] = sum(flops.values())
    flops["qk_proj_skippable"] = flops["q_proj"] + flops["k_proj"] if reused and own_columns is None else 0
    return flops


@dataclass
class _State:
    sources: dict[int, int]
    phase: str
    columns: str
    last_user: dict[int, int]
    block: int
    owner: AttentionReuse
    probs: dict[int, torch.Tensor] = field(default_factory=dict)
    visual: torch.Tensor | None = None  # (B, N_prompt) bool
    stored: int = 0

    @property
    def stats(self) -> dict:
        return self.owner.stats  # read each time: a harness may replace ``method.stats``

    def active(self, q: int, s: int) -> bool:
        return self.phase == "both" or self.phase == ("prefill" if q == s else "decode")

    def reused_columns(self, s: int) -> torch.Tensor:
        if self.visual is None:
            raise ValueError('columns="visual" needs input_ids at the prefill (to find the visual tokens)')
        return torch.nn.functional.pad(self.visual, (0, s - self.visual.shape[1]), value=False)  # generated: text


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered under :data:`ATTENTION_NAME`."""
    state: _State | None = getattr(module, "_atlas_attention_reuse", None)
    layer, q, s = module.layer_idx, query.shape[2], key.shape[2]
    if state is None or not state.active(q, s) or (layer not in state.sources and layer not in state.last_user):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = _bool_mask(attention_mask, q, s, query.device)
    source = state.sources.get(layer)
    if source is None:  # an anchor with sharers: materialise and keep its map
        probs = state.probs[layer] = attention_probs(query, key, scaling, mask, state.block)
        state.stored += probs.element_size() * probs.nelement()
        state.stats["peak_prob_bytes"] = max(state.stats.get("peak_prob_bytes", 0), state.stored)
        return reuse_attention(probs, value, state.block), None
    probs = state.probs[source]
    if probs.shape != (query.shape[0], query.shape[1], q, s):
        raise RuntimeError(
            f"layer {layer}: the map of layer {source} has shape {tuple(probs.shape)}, not of this forward"
        )
    if state.columns == "visual":
        probs = blend_probs(probs, query, key, state.reused_columns(s), scaling, mask)
    if state.last_user[source] == layer:  # last sharer of this map: free it
        state.stored -= state.probs[source].element_size() * state.probs.pop(source).nelement()
    state.stats["reused_calls"] = state.stats.get("reused_calls", 0) + 1
    return reuse_attention(probs, value, state.block), None


AttentionInterface.register(ATTENTION_NAME, _attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@register("attention-reuse-layers", family="attention-reuse", kind="decoding")
@dataclass
class AttentionReuse:
    """Cross-layer attention-map sharing.

    Args:
        share_every: layers ``0, k, 2k, ...`` compute their map, the others reuse the previous one.
        anchors: explicit anchor layers (overrides ``share_every``).
        sources: explicit ``{sharer: source}`` map (overrides both), e.g. ``{3: 0}``.
        phase: ``"prefill"``, ``"decode"`` or ``"both"``.
        columns: ``"all"`` or ``"visual"`` (borrow only the visual-token columns).
        block: query rows per causal block of the anchors' scores and of every ``PV`` product
            (keys past a block are skipped); 0 computes all query-key pairs at once.
    """

    share_every: int = 2
    anchors: tuple[int, ...] | None = None
    sources: dict[int, int] | None = None
    phase: str = "both"
    columns: str = "all"
    block: int = 512
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def reuse_map(self, n_layers: int) -> dict[int, int]:
        """``{sharer: anchor}`` of a model with ``n_layers`` layers."""
        return resolve_sources(n_layers, share_every=self.share_every, anchors=self.anchors, sources=self.sources)

    def __call__(self, model, inputs: dict | None = None, max_new_tokens: int | None = None):
        """``with method(model):`` patches the model; ``method(model, inputs, max_new_tokens)`` greedy-decodes with it."""
        if inputs is None:
            return self._patch(model)
        with self._patch(model):
            n = inputs["input_ids"].shape[1]
            out = model.generate(**inputs, max_new_tokens=max_new_tokens or 32, do_sample=False)
        return DecodeResult(out[0, n:].tolist(), self.stats)

    @contextmanager
    def _patch(self, model) -> Iterator[AttentionReuse]:
        if self.phase not in PHASES or self.columns not in ("all", "visual"):
            raise ValueError(f"phase must be one of {PHASES} and columns 'all' or 'visual'")
        adapter = adapter_for(model)
        inner = adapter.inner(model)
        language_model = adapter.text_model(model)
        text_config = language_model.config
        previous = text_config._attn_implementation
        if previous not in ("sdpa", ATTENTION_NAME):
            raise ValueError(f"attention reuse replaces sdpa; the model uses {previous!r}")
        sources = self.reuse_map(len(language_model.layers))
        last_user = {}
        for target, source in sources.items():
            last_user[source] = max(target, last_user.get(source, -1))
        state = _State(
            sources=sources, phase=self.phase, columns=self.columns, last_user=last_user, block=self.block, owner=self
        )
        self.stats = {"reused_layers": sorted(sources)}

        def on_model(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            state.probs.clear()
            state.stored = 0
            if cache is not None and cache.get_seq_length() > 0:
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            state.visual = None if ids is None else adapter.visual_mask(ids, module.config)
            state.stats["reused_layers"] = sorted(sources)
            if state.visual is not None:
                state.stats["visual_in"] = state.stats["visual_kept"] = int(state.visual[0].sum())  # nothing is dropped

        attentions = [layer.self_attn for layer in language_model.layers]
        for attention in attentions:
            attention._atlas_attention_reuse = state
        hook = inner.register_forward_pre_hook(on_model, with_kwargs=True)
        text_config._attn_implementation = ATTENTION_NAME
        try:
            yield self
        finally:
            text_config._attn_implementation = previous
            hook.remove()
            for attention in attentions:
                del attention._atlas_attention_reuse
