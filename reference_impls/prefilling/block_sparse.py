"""Block-sparse prefill attention for long visual contexts (text dense, visual blocks sparse).

Dynamic sparse attention for pre-filling (MInference, XAttention, MMInference) rests on one
observation: for long inputs most query-key blocks carry almost no attention mass, so the prefill
can skip them. Visual tokens are the long, redundant part of an LVLM prompt. Here the sequence
is cut into blocks; every query block that holds a text token attends densely (causal); a block
of visual queries attends only to: sink blocks at the start, its local neighbourhood (the
diagonal and ``local_blocks`` before it), every block that holds text (the prompt), and the
top-scored remaining blocks, scored by the dot product of block-mean queries and keys (averaged
over heads). ``budget`` sets how many of the causal key blocks a visual query block may use.
Decoding (one query against the cache) falls back to sdpa; no token is dropped.

Paper: arXiv 2407.02490 (MInference 1.0); related: arXiv 2503.16428 (XAttention, antidiagonal
block scoring), arXiv 2504.16083 (MMInference, modality-aware).

Upstream: none followed. The pattern below is our own simplification of the family, so there is
no parity test against an upstream rule; the papers' code (e.g. microsoft/MInference) was not
re-implemented. The tests check the block path against a dense masked reference instead.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.block_sparse import BlockSparseAttention
    >>> model = tiny_qwen25vl()
    >>> method = BlockSparseAttention(budget=0.3, block_size=4)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model, grids=((16, 16),)))
    >>> method.stats["visual_kept"] == method.stats["visual_in"]
    True

Deviations:
    - Our own simplified pattern, not any one paper's: MInference picks one of three patterns
      per head offline and estimates blocks from the last queries; XAttention scores blocks by
      antidiagonal sums; we use a block-mean score shared by all heads, plus fixed sink/local/text
      blocks, and no kernel: the sparse path is a loop over query blocks with gathered keys
      (it saves FLOPs; whether it saves time on CPU depends on the length, see the notebook).
    - ``budget`` here is the fraction of causal key blocks a visual query block reads (attention
      density), not a fraction of tokens kept: ``stats["visual_kept"] == stats["visual_in"]``,
      and ``stats["density"]`` is the fraction of causal query-key blocks computed.
    - A custom attention name gets ``attention_mask=None`` unless a mask function is registered
      (``docs/notes/transformers5.md`` §4); we register transformers' ``sdpa_mask`` so padded batches
      work, and apply causal masking ourselves when the mask is None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from reference_impls.common.architectures import adapter_for
from reference_impls.registry import register

__all__ = ["ATTENTION_NAME", "BlockSparseAttention", "block_pattern", "block_sparse_attention", "pattern_to_mask"]

ATTENTION_NAME = "atlas_block_sparse"


def block_pattern(
    query: torch.Tensor,
    key: torch.Tensor,
    visual: torch.Tensor,
    *,
    block_size: int,
    budget: float,
    sink_blocks: int = 1,
    local_blocks: int = 1,
) -> torch.Tensor:
    """Which key blocks each query block computes (causal, one pattern shared by all heads).

    Args:
        query: (B, Hq, N, D) rotated queries.
        key: (B, Hkv, N, D) rotated keys.
        visual: (B, N) bool, visual tokens.
        block_size: tokens per block.
        budget: fraction of causal key blocks a visual query block reads (1.0 = dense).
        sink_blocks: leading blocks every query block reads.
        local_blocks: blocks before the diagonal every query block reads.

    Returns:
        (B, nb, nb) bool block mask, lower-triangular.
    """
    batch, _, n, dim = query.shape
    nb = -(-n // block_size)
    pad = nb * block_size - n
    causal = torch.ones(nb, nb, dtype=torch.bool, device=query.device).tril()
    has_text = F.pad(~visual, (0, pad), value=False).view(batch, nb, block_size).any(-1)  # (B, nb)
    if budget >= 1:
        return causal.expand(batch, nb, nb).clone()
    # Block-mean queries and keys, averaged over heads (keys repeated for GQA groups).
    groups = query.shape[1] // key.shape[1]
    counts = torch.full((nb,), block_size, device=query.device).index_fill(0, torch.tensor([nb - 1]), block_size - pad)
    q_mean = F.pad(query.float(), (0, 0, 0, pad)).view(batch, -1, nb, block_size, dim).sum(3) / counts[:, None]
    k_mean = F.pad(key.float(), (0, 0, 0, pad)).view(batch, -1, nb, block_size, dim).sum(3) / counts[:, None]
    scores = (q_mean @ k_mean.repeat_interleave(groups, 1).transpose(-1, -2)).mean(1)  # (B, nb, nb)

    rows = torch.arange(nb, device=query.device)
    fixed = (rows[None, :] < sink_blocks) | ((rows[:, None] - rows[None, :]) <= local_blocks)  # (nb, nb)
    fixed = (fixed[None] | has_text[:, None, :]) & causal  # text blocks are the prompt: always read
    quota = (budget * (rows + 1)).ceil().long()  # (nb,) blocks a visual query block may read
    ranked = scores.masked_fill(~causal, float("-inf")).masked_fill(fixed, float("inf"))
    order = ranked.argsort(-1, descending=True).argsort(-1)  # rank of each key block in its row
    chosen = (order < quota[None, :, None]) & causal | fixed
    # Query blocks holding any text stay dense.
    return torch.where(has_text[:, :, None], causal, chosen)


def pattern_to_mask(pattern: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Token-level (B, N, N) bool mask of a block pattern, causal inside the diagonal blocks."""
    tokens = pattern.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[:, :n, :n]
    return tokens & torch.ones(n, n, dtype=torch.bool, device=pattern.device).tril()


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: torch.Tensor,
    *,
    block_size: int,
    scaling: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention computing only the key blocks in ``pattern`` (a loop over query blocks).

    Args:
        query: (B, Hq, N, D); key, value: (B, Hkv, N, D).
        pattern: (B, nb, nb) bool from :func:`block_pattern`.
        block_size: tokens per block.
        scaling: softmax scale.
        attention_mask: optional (B|1, 1, N, N) bool mask (True = attend), e.g. padding.

    Returns:
        (B, N, Hq, D), the layout transformers' attention functions return.
    """
    batch, heads, n, dim = query.shape
    out = query.new_empty(batch, heads, n, dim)
    positions = torch.arange(n, device=query.device)
    for b in range(batch):
        for i in range(pattern.shape[1]):
            start, end = i * block_size, min(n, (i + 1) * block_size)
            blocks = pattern[b, i].nonzero()[:, 0]
            cols = (blocks[:, None] * block_size + torch.arange(block_size, device=query.device)).flatten()
            cols = cols[cols < end]  # (m,) causal: nothing past this query block
            allowed = cols[None, :] <= positions[start:end, None]  # (bq, m)
            if attention_mask is not None:
                given = attention_mask[b if attention_mask.shape[0] > 1 else 0, 0, start:end][:, cols]
                allowed = allowed & given
                allowed[~allowed.any(-1)] = True  # fully padded query rows: any finite output
            out[b, :, start:end] = F.scaled_dot_product_attention(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, cols],
                value[b : b + 1, :, cols],
                attn_mask=allowed,
                scale=scaling,
                enable_gqa=True,
            )[0]
    return out.transpose(1, 2)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered under :data:`ATTENTION_NAME`."""
    state = getattr(module, "_atlas_block_sparse", None)
    n_query, n_key = query.shape[2], key.shape[2]
    if state is None or n_query != n_key or n_query == 1 or state.visual is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    method, visual = state.method, state.visual
    pattern = block_pattern(
        query,
        key,
        visual,
        block_size=method.block_size,
        budget=method.budget,
        sink_blocks=method.sink_blocks,
        local_blocks=method.local_blocks,
    )
    causal_blocks = pattern.shape[1] * (pattern.shape[1] + 1) // 2
    state.density.append(float(pattern[0].sum()) / causal_blocks)
    if bool(pattern.sum() == causal_blocks * pattern.shape[0]):  # full pattern: exactly sdpa
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask == 0
    output = block_sparse_attention(
        query,
        key,
        value,
        pattern,
        block_size=method.block_size,
        scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
        attention_mask=mask,
    )
    return output, None


AttentionInterface.register(ATTENTION_NAME, _attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@dataclass
class _State:
    method: BlockSparseAttention
    visual: torch.Tensor | None = None
    density: list[float] = field(default_factory=list)


@register("block-sparse", family="sparse-attention", kind="visual-token")
@dataclass
class BlockSparseAttention:
    """Block-sparse prefill attention.

    Args:
        budget: fraction of causal key blocks a visual query block reads (1.0 = dense sdpa).
        block_size: tokens per block.
        sink_blocks: leading blocks always read.
        local_blocks: blocks before the diagonal always read.
    """

    budget: float = 0.25
    block_size: int = 64
    sink_blocks: int = 1
    local_blocks: int = 1
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    @contextmanager
    def __call__(self, model) -> Iterator[BlockSparseAttention]:
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must lie in (0, 1], got {self.budget}")
        adapter = adapter_for(model)
        inner = adapter.inner(model)
        text_config = adapter.text_model(model).config
        previous = text_config._attn_implementation
        if previous not in ("sdpa", ATTENTION_NAME):
            raise ValueError(f"block-sparse attention replaces sdpa; the model uses {previous!r}")
        state = _State(method=self)
        self.stats = {}

        def on_model(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and cache.get_seq_length() > 0:
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            config = module.config
            state.visual = adapter.visual_mask(ids, config)
            state.density.clear()
            n_visual = int(state.visual[0].sum())
            self.stats = {"visual_in": n_visual, "visual_kept": n_visual}

        def after_model(module, args, kwargs, output):
            if state.density:
                self.stats["density"] = sum(state.density) / len(state.density)

        attentions = adapter.attention_modules(model)
        for attention in attentions:
            attention._atlas_block_sparse = state
        hooks = [
            inner.register_forward_pre_hook(on_model, with_kwargs=True),
            inner.register_forward_hook(after_model, with_kwargs=True),
        ]
        text_config._attn_implementation = ATTENTION_NAME
        try:
            yield self
        finally:
            text_config._attn_implementation = previous
            for hook in hooks:
                hook.remove()
            for attention in attentions:
                del attention._atlas_block_sparse
