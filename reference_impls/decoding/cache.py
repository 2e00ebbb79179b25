"""Compressed KV cache for transformers 5.24: logical length, real per-head storage, exact bytes.

Every KV-cache method of the atlas builds on the three classes here:

- :class:`CompressedLayer` (a ``DynamicLayer``) keeps the **logical** length (prompt plus
  generated tokens, what ``get_seq_length`` returns and what Qwen2.5-VL derives positions from)
  apart from the **physical** entries it stores, and gives the mask builder the physical size
  plus an offset (as ``DynamicSlidingWindowLayer`` does). All KV heads of a layer hold the same
  number of entries, so plain sdpa math reads it. It stores, per entry, the logical position it
  came from (int32 metadata, counted in the bytes).
- :class:`RaggedLayer` stores one tensor per KV head, so heads really hold different numbers of
  entries (no padding, no masking); the registered attention function ``"atlas_kv"`` attends
  head by head.
- :class:`CompressedCache` (a ``Cache``) adds ``resident_bytes()`` / ``offloaded_bytes()``: the
  sums of ``element_size() * nelement()`` over every tensor a layer keeps, metadata included.

Methods subclass :class:`KVCacheMethod`, a dataclass with a ``budget`` (a float is a fraction of
the prompt length, an int an absolute number of entries, per KV head), and name their
``layer_class`` (a :class:`CompressedLayer` subclass built with the method). ``with method(model): model.generate(...)`` switches the text model to the
``"atlas_kv"`` attention function (sdpa math, plus the layer's prefill scoring and decode
hooks), installs a fresh cache per ``generate`` call (and per direct ``model(..., use_cache=True)``
call made without a cache) and restores the model on exit.

Example::

    from reference_impls.decoding.snapkv import SnapKV
    method = SnapKV(budget=0.2)
    with method(model):
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    method.cache.resident_bytes()

Deviations / guesses: batch size 1 only (per-head storage follows the public per-head
implementations, which refuse batches); the attention function receives no cache object, so
:meth:`CompressedCache.bind` stores a weak reference to each layer on its attention module.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from reference_impls.common.architectures import UnsupportedFeature, adapter_for

__all__ = [
    "ATTN_NAME",
    "PromptLayout",
    "prompt_layout",
    "resolve_budget",
    "attend",
    "CompressedLayer",
    "RaggedLayer",
    "CompressedCache",
    "KVCacheMethod",
    "tensor_bytes",
    "greedy_decode",
    "flat_attention",
]

ATTN_NAME = "atlas_kv"


def tensor_bytes(tensors) -> int:
    """Exact bytes of an iterable of tensors (``None`` entries are skipped)."""
    return sum(t.element_size() * t.nelement() for t in tensors if t is not None)


def resolve_budget(budget: float | int, n: int, *, minimum: int = 1) -> int:
    """Entries per KV head for a prompt of ``n`` tokens.

    Args:
        budget: a float in (0, 1] is a fraction of ``n`` (rounded); an int >= 1 is an absolute
            number of entries. The two forms are told apart by type, so they cannot be mixed.
        n: prompt length.
        minimum: lower clip (e.g. sink + window + 1), itself clipped to ``n``.

    Returns:
        ``clip(b, minimum, n)``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be a float ratio or an int count, got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a ratio budget must be in (0, 1], got {budget}")
        b = int(round(budget * n))
    else:
        if budget < 1:
            raise ValueError(f"an absolute budget must be >= 1, got {budget}")
        b = budget
    return max(min(minimum, n), min(b, n))


@dataclass
class PromptLayout:
    """Modality of each prompt position, found from token ids (never from constants)."""

    visual: torch.Tensor
    """Bool ``(N,)``: image or video token."""
    item: torch.Tensor
    """Long ``(N,)``: index of the image/video run a visual token belongs to, -1 for text."""

    @property
    def n(self) -> int:
        return int(self.visual.numel())


def prompt_layout(
    config, input_ids: torch.Tensor | None = None, mm_token_type_ids: torch.Tensor | None = None
) -> PromptLayout:
    """The :class:`PromptLayout` of one prompt (batch 1).

    Visual positions are the image/video token ids of ``input_ids`` (ids from ``config``, read
    by the architecture adapter), or ``mm_token_type_ids > 0`` when only that is given. Items are maximal runs of
    visual positions that also break where the token type changes (image to video).
    """
    if input_ids is not None:
        ids = input_ids.reshape(-1)
        kind = adapter_for(config).token_kinds(ids, config)
    elif mm_token_type_ids is not None:
        kind = mm_token_type_ids.reshape(-1).long()
    else:
        raise ValueError("prompt_layout needs input_ids or mm_token_type_ids")
    visual = kind > 0
    starts = visual & torch.cat([torch.tensor([True]), kind[1:] != kind[:-1]])
    item = torch.cumsum(starts.long(), 0) - 1
    item = torch.where(visual, item, torch.full_like(item, -1))
    return PromptLayout(visual=visual.cpu(), item=item.cpu())


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, n_new: int) -> torch.Tensor:
    """Exact softmax attention of ``query`` over cached entries whose last ``n_new`` are the queries' own.

    Args:
        query: ``(1, Hq, q, D)``, post-RoPE.
        keys: ``(1, H, S, D)`` with ``Hq = G*H`` (GQA handled by sdpa).
        values: ``(1, H, S, D)``.
        scaling: softmax scale.
        n_new: how many of the last entries are the tokens of this forward (``== q``).

    Returns:
        ``(1, q, Hq, D)``, the layout the attention functions of transformers return.
    """
    q = query.shape[2]
    mask = None
    if q > 1:
        s = keys.shape[2]
        # Old entries are visible to every query; new ones causally (lower-right alignment).
        mask = torch.ones(q, s, dtype=torch.bool, device=query.device)
        mask[:, s - n_new :] = torch.tril(torch.ones(q, n_new, dtype=torch.bool, device=query.device))
    out = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=query.shape[1] != keys.shape[1]
    )
    return out.transpose(1, 2).contiguous()


def flat_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, head_of_entry: torch.Tensor, scaling: float
) -> torch.Tensor:
    """One-token attention over the entries of all KV heads packed in one tensor.

    Each query head attends only to the entries of its own KV head (a mask on one matmul), so
    heads of different lengths need no padding and no per-head loop.

    Args:
        query: ``(1, Hq, 1, D)``.
        keys, values: ``(T, D)``, entries of every KV head in any order.
        head_of_entry: ``(T,)`` KV head of each entry.
        scaling: softmax scale.

    Returns:
        ``(1, 1, Hq, D)``.
    """
    n_q = query.shape[1]
    groups = n_q // (int(head_of_entry.max()) + 1)
    q = query[0, :, 0].float()  # (Hq, D)
    logits = q @ keys.float().T * scaling  # (Hq, T)
    own = head_of_entry[None, :] == (torch.arange(n_q, device=q.device) // groups)[:, None]
    probs = logits.masked_fill(~own, float("-inf")).softmax(-1)
    return (probs @ values.float()).to(query.dtype)[None, None]


class CompressedLayer(DynamicLayer):
    """A cache layer whose physical entries (equal count for every KV head) are a subset of the logical ones.

    Subclasses override :meth:`after_prefill` (compress once, given the prefill's post-RoPE
    queries) and/or :meth:`decode_attention` / :meth:`after_decode` (per-step policies).
    """

    def __init__(self, layer_idx: int = 0, method: KVCacheMethod | None = None, **kwargs: Any):
        super().__init__()
        self.layer_idx = layer_idx
        self.method = method  # the configuration this layer applies
        self.logical_length = 0
        self.positions: torch.Tensor | None = None  # (H, S) int32 logical position of each entry
        self.prompt_length = 0
        self._cache_ref = None
        self.sliding_window: int | None = None  # set by make_cache on sliding-window layers (Gemma 3)

    def layer_budget(self, n: int) -> int:
        """Entries per KV head this layer keeps of ``n`` (the method's ``budget``; per-layer schemes override it)."""
        return resolve_budget(self.method.budget, n)

    # --- transformers' layer interface -------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.positions = torch.zeros(key_states.shape[1], 0, dtype=torch.int32, device=self.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise ValueError("compressed KV caches support batch size 1 only (per-head storage)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        if self.logical_length == 0:
            self.prompt_length = q
        new_pos = torch.arange(self.logical_length, self.logical_length + q, dtype=torch.int32, device=self.device)
        self.logical_length += q
        return self._append(key_states, value_states, new_pos)

    def _append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        self.keys = torch.cat([self.keys, k], dim=-2) if self.keys.numel() else k
        self.values = torch.cat([self.values, v], dim=-2) if self.values.numel() else v
        self.positions = torch.cat([self.positions, pos.expand(k.shape[1], -1)], dim=-1)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.logical_length

    def physical_length(self) -> int:
        """Largest number of entries any KV head of this layer holds."""
        return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        phys = self.physical_length()
        # The offset maps physical index i to logical position i + offset for the new tokens.
        return phys + query_length, self.logical_length - phys

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        if tokens_to_remove > 0 or self.logical_length - self.prompt_length < -tokens_to_remove:
            raise ValueError("compressed layers can only crop generated tokens (a negative count)")
        n = -tokens_to_remove
        self.keys, self.values = self.keys[..., :-n, :], self.values[..., :-n, :]
        self.positions = self.positions[..., :-n]
        self.logical_length -= n

    def reset(self) -> None:
        super().reset()
        self.logical_length = 0
        self.positions = None

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise ValueError("compressed KV caches support batch size 1 only")

    # --- compression helpers -----------------------------------------------------------------
    def keep(self, index: torch.Tensor) -> None:
        """Keep, per KV head, the entries at ``index`` ``(H, k)`` (physical indices, any order)."""
        index = index.sort(dim=-1).values.to(self.device)
        gather = index[None, :, :, None].expand(1, -1, -1, self.keys.shape[-1])
        self.keys = self.keys.gather(2, gather)
        self.values = self.values.gather(2, gather)
        self.positions = self.positions.gather(1, index)

    @property
    def cache(self) -> CompressedCache | None:
        return None if self._cache_ref is None else self._cache_ref()

    # --- hooks called by the "atlas_kv" attention function ----------------------------------
    def attention(self, module, query, key, value, attention_mask, scaling: float, **kwargs):
        """Attention for this layer; the prefill runs sdpa unchanged, then calls the hooks."""
        if query.shape[0] != 1:
            raise ValueError("compressed KV caches support batch size 1 only")
        q = query.shape[2]
        if self.sliding_window is not None and self.logical_length > self.sliding_window:
            # The decode path attends to every kept entry; a sliding-window layer must not.
            raise UnsupportedFeature(
                f"KV-cache methods on a sliding-window layer once the sequence ({self.logical_length} tokens) "
                f"exceeds its window ({self.sliding_window}; layer {self.layer_idx}) are not supported"
            )
        if q == self.logical_length:  # the whole prompt: first forward
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
            self.after_prefill(module, query, scaling)
            cache = self.cache
            if cache is not None and self.layer_idx == len(cache.layers) - 1:
                cache.after_prefill_all()
            return out, None
        out = self.decode_attention(module, query, key, value, scaling)
        self.after_decode(module, query, scaling)
        return out, None

    def after_prefill(self, module, query: torch.Tensor, scaling: float) -> None:
        """Called once per layer right after the prefill attention; ``self.keys`` hold the prompt."""

    def decode_attention(self, module, query, key, value, scaling: float) -> torch.Tensor:
        return attend(query, key, value, scaling, n_new=query.shape[2])

    def after_decode(self, module, query: torch.Tensor, scaling: float) -> None:
        """Called after every decode-step attention (trim policies live here)."""

    # --- bytes -------------------------------------------------------------------------------
    def resident_tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor this layer keeps for attention, metadata included."""
        yield from (self.keys, self.values, self.positions)

    def offloaded_tensors(self) -> Iterator[torch.Tensor]:
        return iter(())

    def head_lengths(self) -> list[int]:
        """Physical entries per KV head."""
        return [self.physical_length()] * (0 if self.keys is None else self.keys.shape[1])

    def head_positions(self, head: int) -> torch.Tensor:
        """Logical positions of the entries head ``head`` holds (sorted)."""
        return self.positions[head].sort().values

    def retrieved_positions(self, head: int) -> torch.Tensor:
        """Logical positions head ``head`` fetched for the last decode step from outside the entries it
        holds (none here; methods that retrieve from a pool override it)."""
        return torch.zeros(0, dtype=torch.int32)


class RaggedLayer(CompressedLayer):
    """A layer whose KV heads hold different numbers of entries, one tensor per head.

    Before :meth:`keep_per_head` it behaves like :class:`CompressedLayer`. Afterwards
    ``head_keys[h]`` is ``(n_h, D)``; ``update`` appends to every head and returns ``(None,
    None)``: only the ``"atlas_kv"`` attention function can read this layer (sdpa or eager on
    it fail loudly instead of silently attending to padding).
    """

    def __init__(self, layer_idx: int = 0, method: KVCacheMethod | None = None, **kwargs: Any):
        super().__init__(layer_idx, method, **kwargs)
        self.head_keys: list[torch.Tensor] | None = None
        self.head_values: list[torch.Tensor] | None = None
        self.head_pos: list[torch.Tensor] | None = None

    @property
    def ragged(self) -> bool:
        return self.head_keys is not None

    def keep_per_head(self, index: list[torch.Tensor]) -> None:
        """Keep, for head ``h``, the entries at ``index[h]`` (1-D physical indices, lengths may differ)."""
        keys, values, positions = self.keys[0], self.values[0], self.positions
        self.head_keys, self.head_values, self.head_pos = [], [], []
        for h, idx in enumerate(index):
            idx = idx.sort().values.to(self.device)
            self.head_keys.append(keys[h].index_select(0, idx).contiguous())
            self.head_values.append(values[h].index_select(0, idx).contiguous())
            self.head_pos.append(positions[h].index_select(0, idx).contiguous())
        # The padded tensors are released: the per-head tensors are the storage now.
        self.keys = self.values = self.positions = None

    def _append(self, k, v, pos):
        if not self.ragged:
            return super()._append(k, v, pos)
        for h in range(len(self.head_keys)):
            self.head_keys[h] = torch.cat([self.head_keys[h], k[0, h]])
            self.head_values[h] = torch.cat([self.head_values[h], v[0, h]])
            self.head_pos[h] = torch.cat([self.head_pos[h], pos])
        return None, None

    def physical_length(self) -> int:
        if not self.ragged:
            return super().physical_length()
        return max(t.shape[0] for t in self.head_keys)

    def head_lengths(self) -> list[int]:
        if not self.ragged:
            return super().head_lengths()
        return [t.shape[0] for t in self.head_keys]

    def head_positions(self, head: int) -> torch.Tensor:
        if not self.ragged:
            return super().head_positions(head)
        return self.head_pos[head].sort().values

    def crop(self, tokens_to_remove: int) -> None:
        if not self.ragged:
            return super().crop(tokens_to_remove)
        n = -tokens_to_remove
        if tokens_to_remove > 0 or self.logical_length - self.prompt_length < n:
            raise ValueError("compressed layers can only crop generated tokens (a negative count)")
        if n:
            self.head_keys = [t[:-n] for t in self.head_keys]
            self.head_values = [t[:-n] for t in self.head_values]
            self.head_pos = [t[:-n] for t in self.head_pos]
            self.logical_length -= n

    def head_ids(self) -> torch.Tensor:
        """``(T,)`` KV head of every entry of ``torch.cat(self.head_keys)``."""
        lengths = torch.tensor(self.head_lengths(), device=self.device)
        return torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)

    def decode_attention(self, module, query, key, value, scaling):
        if not self.ragged:
            return super().decode_attention(module, query, key, value, scaling)
        if query.shape[2] == 1:  # one token: all heads in one masked matmul
            return flat_attention(
                query, torch.cat(self.head_keys), torch.cat(self.head_values), self.head_ids(), scaling
            )
        groups = query.shape[1] // len(self.head_keys)
        outs = [
            attend(
                query[:, h * groups : (h + 1) * groups],
                self.head_keys[h][None, None],
                self.head_values[h][None, None],
                scaling,
                n_new=query.shape[2],
            )
            for h in range(len(self.head_keys))
        ]
        return torch.cat(outs, dim=2)  # (1, q, Hq, D)

    def resident_tensors(self):
        if not self.ragged:
            yield from super().resident_tensors()
            return
        yield from self.head_keys
        yield from self.head_values
        yield from self.head_pos


class CompressedCache(Cache):
    """A ``Cache`` of compressed layers with exact byte accounting."""

    def __init__(self, layers: list[CompressedLayer]):
        super().__init__(layers=layers)
        for i, layer in enumerate(layers):
            layer.layer_idx = i
            layer._cache_ref = weakref.ref(self)
        self.layout: PromptLayout | None = None
        self.transient_bytes = 0
        """Largest per-step working buffer (e.g. retrieved chunks, dequantised keys)."""

    def set_prompt(self, layout: PromptLayout) -> None:
        """Give the layers the modality of every prompt position (methods that need it)."""
        self.layout = layout

    def bind(self, model) -> CompressedCache:
        """Make every text attention module of ``model`` find its layer (weak reference)."""
        text_config = model.config.get_text_config()
        if text_config._attn_implementation != ATTN_NAME:
            raise ValueError(
                f"a compressed cache needs attn_implementation {ATTN_NAME!r} on the text model "
                f"(got {text_config._attn_implementation!r}; eager cannot read per-layer lengths); "
                "use `with method(model):` or model.set_attn_implementation({'text_config': 'atlas_kv'})"
            )
        modules = _text_attention_modules(model)
        if len(modules) != len(self.layers):
            raise ValueError(f"{len(self.layers)} cache layers for {len(modules)} attention modules")
        for module, layer in zip(modules, self.layers):
            module._atlas_kv_layer = weakref.ref(layer)
        return self

    def after_prefill_all(self) -> None:
        """Called once, after the last layer's prefill attention (cross-layer methods override)."""

    def resident_bytes(self) -> int:
        """Exact bytes of every tensor kept resident for attention (entries, positions, scores, metadata)."""
        return sum(tensor_bytes(layer.resident_tensors()) for layer in self.layers)

    def offloaded_bytes(self) -> int:
        """Exact bytes of tensors kept out of the attention's working set (cold stores)."""
        return sum(tensor_bytes(layer.offloaded_tensors()) for layer in self.layers)

    def byte_report(self) -> dict[str, int]:
        """Resident, offloaded and transient bytes plus what a full cache of the same tokens would hold."""
        layer = self.layers[0]
        n_heads = len(layer.head_lengths())
        entry = 0
        for t in layer.resident_tensors():
            if t is not None and t.dim() >= 1 and t.is_floating_point():
                entry = 2 * t.shape[-1] * t.element_size()
                break
        full = len(self.layers) * n_heads * layer.logical_length * entry
        return {
            "resident_bytes": self.resident_bytes(),
            "offloaded_bytes": self.offloaded_bytes(),
            "transient_bytes": self.transient_bytes,
            "full_bytes": full,
            "logical_length": layer.logical_length,
        }


def _require_token_types(kwargs: dict) -> None:
    # Without mm_token_type_ids Qwen2.5-VL silently falls back to 1-D positions.
    if kwargs.get("mm_token_type_ids") is None and any(
        kwargs.get(k) is not None for k in ("image_grid_thw", "video_grid_thw")
    ):
        raise ValueError("pass mm_token_type_ids with image/video inputs (without it Qwen2.5-VL uses 1-D positions)")


def _text_attention_modules(model) -> list[torch.nn.Module]:
    return adapter_for(model).attention_modules(model)


def atlas_kv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: sdpa math, routed through the module's compressed layer."""
    ref = getattr(module, "_atlas_kv_layer", None)
    layer = ref() if ref is not None else None
    if layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return layer.attention(module, query, key, value, attention_mask, scaling, **kwargs)


AttentionInterface.register(ATTN_NAME, atlas_kv_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


@dataclass
class KVCacheMethod:
    """Base of every ``kind="kv-cache"`` method: ``with method(model): model.generate(...)``.

    Subclasses are dataclasses with a ``budget`` that name their ``layer_class`` (or override
    :meth:`make_layer`), and override :meth:`cache_class` when they need a cache subclass.

    The fields are configuration. ``cache`` and ``stats`` are run state of the last request:
    no ``__init__`` argument, no part of ``repr`` or ``==``, and reset to ``None`` in a copy made
    with :func:`dataclasses.replace` (copy configurations that way, never through ``__dict__``).
    """

    budget: float | int = 0.1
    layer_class: ClassVar[type[CompressedLayer]]
    cache: CompressedCache | None = field(default=None, init=False, repr=False, compare=False)
    """The cache of the last :meth:`make_cache` call (run state)."""
    stats: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    """The byte report of the last ``generate`` (run state)."""

    def make_layer(self, layer_idx: int, config) -> CompressedLayer:
        return self.layer_class(layer_idx, self)

    def cache_class(self) -> type[CompressedCache]:
        return CompressedCache

    def make_cache(self, model, input_ids=None, mm_token_type_ids=None) -> CompressedCache:
        """A fresh cache bound to ``model`` (whose text attention must be ``"atlas_kv"``)."""
        text_config = model.config.get_text_config()
        layers = [self.make_layer(i, text_config) for i in range(text_config.num_hidden_layers)]
        for i, window in adapter_for(model).sliding_windows(model.config).items():
            layers[i].sliding_window = window
        cache = self.cache_class()(layers)
        cache.method = self
        if input_ids is not None or mm_token_type_ids is not None:
            cache.set_prompt(prompt_layout(model.config, input_ids, mm_token_type_ids))
        self.cache = cache
        return cache.bind(model)

    @contextlib.contextmanager
    def __call__(self, model):
        text_config = model.config.get_text_config()
        previous = text_config._attn_implementation
        model.set_attn_implementation({"text_config": ATTN_NAME})
        original_generate = model.generate

        def generate(*args, **kwargs):
            _require_token_types(kwargs)
            if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                kwargs["cache"] = self.make_cache(model, ids, kwargs.get("mm_token_type_ids"))
            output = original_generate(*args, **kwargs)
            cache = kwargs.get("cache") or kwargs.get("past_key_values")
            if isinstance(cache, CompressedCache):
                self.stats = cache.byte_report()
            return output

        original_forward = model.forward

        @functools.wraps(original_forward)
        def forward(*args, **kwargs):
            # A direct prefill call (e.g. an evaluation harness) without a cache gets ours too.
            if kwargs.get("use_cache") and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
                _require_token_types(kwargs)
                ids = kwargs.get("input_ids", args[0] if args else None)
                kwargs["cache"] = self.make_cache(model, ids, kwargs.get("mm_token_type_ids"))
            return original_forward(*args, **kwargs)

        model.generate = generate
        model.forward = forward
        try:
            yield self
        finally:
            del model.generate
            del model.forward
            model.set_attn_implementation({"text_config": previous})
            for module in _text_attention_modules(model):
                if hasattr(module, "_atlas_kv_layer"):
                    del module._atlas_kv_layer


@torch.no_grad()
def greedy_decode(
    model,
    inputs: dict,
    cache: Cache,
    max_new_tokens: int,
    explicit_positions: bool = True,
    forced: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference greedy decoder for Qwen2.5-VL with an explicit cache (batch 1, no EOS stop).

    ``forced`` (``(1, T)``) feeds those tokens instead of the argmax (teacher forcing), e.g. the
    full cache's continuation, so that logits of two caches compare step by step.

    With ``explicit_positions`` the M-RoPE ids come from ``get_rope_index`` at the prefill and
    grow by one per step; without, the model derives them from ``cache.get_seq_length()`` (the
    logical length) plus its stored ``rope_deltas``. Both must match ``model.generate``.

    Returns:
        ``(tokens (1, T), logits (T, vocab))``.
    """
    position_ids = None
    if explicit_positions:
        position_ids, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs.get("attention_mask"),
        )  # (3, 1, N)
    out = model(**inputs, cache=cache, use_cache=True, position_ids=position_ids)
    tokens, logits = [], []
    last = None if position_ids is None else position_ids[..., -1:]
    for step in range(max_new_tokens):
        step_logits = out.logits[:, -1]
        token = step_logits.argmax(-1, keepdim=True)  # (1, 1)
        tokens.append(token)
        if forced is not None:
            token = forced[:, step : step + 1]
        logits.append(step_logits[0])
        if step == max_new_tokens - 1:
            break
        if last is not None:
            last = last + 1
        out = model(input_ids=token, cache=cache, use_cache=True, position_ids=last)
    return torch.cat(tokens, dim=1), torch.stack(logits)
