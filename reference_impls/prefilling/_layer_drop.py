"""Drop visual hidden states inside the LLM layer loop of Qwen2.5-VL (shared by FastV, PyramidDrop,
SparseVLM, DivPrune and TRIM; :class:`SingleLayerDrop` gives the plan of the methods that drop once,
at ``layer``). Private: methods call :func:`attach` with a *plan*.

How it works (``docs/notes/transformers5.md`` §2, §6):

- A forward pre-hook on ``model.model`` reads ``input_ids`` and the 2-D ``attention_mask`` and
  decides whether this forward is a prefill (empty or no cache). Visual tokens come from the ids
  in the config; "text" is every valid, non-visual token; the last prompt token is the last
  valid one. Nothing assumes where the image sits in the prompt.
- A forward pre-hook (with kwargs) on every decoder layer. During prefill, at a layer the plan
  names as a boundary, the plan returns the indices to keep (in the current coordinates); from
  that layer on every layer index-selects the sequence axis of its hidden states (only at the
  boundary: later layers receive them already shortened), ``position_embeddings`` (cos, sin),
  the text ``position_ids`` and the 4-D mask. Kept tokens keep their original order and, with
  ``positions="keep"`` (the default), their original M-RoPE positions.
- ``positions="renumber"`` (a plan attribute) is the LLaVA-code rule of PyramidDrop, SparseVLM
  and DivPrune: from the first drop on, a layer gives its tokens the positions 0..n-1 of their
  index among the valid tokens it holds (the same number on all three M-RoPE axes), and during
  decoding a new token of that layer sits right after them (its position is the number of valid
  entries the layer has cached). Layers before the first drop keep the model's positions.
- Layers that hold fewer KV entries get a :class:`_LogicalLayer` in the cache: its
  ``get_seq_length()`` is the *logical* length (prompt plus generated tokens, what positions are
  derived from), its ``get_mask_sizes()`` the *physical* one. The mask transformers builds
  during decoding is sized for layer 0; pruned layers select their columns from it.
- Decoding uses sdpa (or any registered function), never eager (``docs/notes/transformers5.md`` §3).

Limits: every row of a batch must hold the same number of visual tokens (the kept sets must be
rectangular); only ``DynamicCache``-style caches (plain ``DynamicLayer``) are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

from reference_impls.common.architectures import UnsupportedFeature, adapter_for

__all__: list[str] = []  # private module; see attach()

Positions = Literal["keep", "renumber"]
"""Positions of the tokens after a drop: their original M-RoPE ones, or their index (see module doc)."""


class _LogicalLayer(DynamicLayer):
    """A ``DynamicLayer`` that had ``dropped`` prompt entries removed before they were stored."""

    def __init__(self, dropped: int):
        super().__init__()
        self.dropped = dropped

    def physical_length(self) -> int:
        return super().get_seq_length()

    def get_seq_length(self) -> int:
        physical = self.physical_length()
        return physical + self.dropped if physical else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical_length() + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a pruned cache layer cannot be cropped (assisted decoding is not supported)")

    def reset(self) -> None:
        super().reset()
        self.dropped = 0


@dataclass
class DropContext:
    """What a plan sees at a boundary layer during prefill (all in the current coordinates)."""

    layer_idx: int
    hidden: torch.Tensor  # (B, n, D) entering this layer
    cos: torch.Tensor  # (B, n, hd)
    sin: torch.Tensor  # (B, n, hd)
    visual: torch.Tensor  # (B, n) bool
    valid: torch.Tensor  # (B, n) bool, False on padding
    text: torch.Tensor  # (B, n) bool, prompt text: valid, neither visual nor a vision start/end marker
    last: torch.Tensor  # (B,) index of the last prompt token
    n_visual_in: int  # visual tokens per row in the prompt
    layers: nn.ModuleList
    kept: torch.Tensor  # (B, n) original index of each current token
    embeds: torch.Tensor  # (B, N, D) hidden states entering layer 0, original coordinates
    prompt_visual: torch.Tensor  # (B, N) bool, visual tokens of the prompt, original coordinates
    prompt_text: torch.Tensor  # (B, N) bool, text tokens of the prompt (as ``text``), original coordinates
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Stashed ``(hidden, cos, sin)`` entering earlier layers, in these same coordinates."""


class Plan(Protocol):
    def boundaries(self, num_layers: int) -> list[int]: ...
    def stash(self, num_layers: int) -> set[int]: ...
    def select(self, ctx: DropContext) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def _gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Select along ``dim`` with a per-row ``index`` of shape (B, k); broadcasts a batch of 1."""
    if x.shape[0] == 1 and index.shape[0] > 1:
        x = x.expand(index.shape[0], *x.shape[1:])
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape[0], index.shape[1]
    full = list(x.shape)
    full[dim] = index.shape[1]
    return x.gather(dim, index.view(shape).expand(full))


@dataclass
class _State:
    plan: Any
    owner: Any
    num_layers: int
    boundaries: list[int]
    stash_layers: set[int]
    positions: str = "keep"
    rotary: Any = None
    prefill: bool = False
    n_prompt: int = 0
    visual: torch.Tensor | None = None  # (B, N) original coordinates
    valid: torch.Tensor | None = None
    text: torch.Tensor | None = None
    n_visual_in: int = 0
    cur: torch.Tensor | None = None  # (B, n) absolute indices kept so far; None = all
    layer_keep: dict[int, torch.Tensor | None] = field(default_factory=dict)
    embeds: torch.Tensor | None = None  # (B, N, D) entering layer 0
    renumbered: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) of the current tokens, renumber mode
    next_position: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B,) valid entries cached
    inputs: dict[int, tuple] = field(default_factory=dict)
    kept_per_layer: list[int] = field(default_factory=list)
    layers: Any = None


def _on_model(state: _State, module, args, kwargs) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    state.prefill = cache is None or cache.get_seq_length() == 0
    if not state.prefill:
        return
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is None:
        raise ValueError("visual-token pruning needs input_ids to find the visual tokens")
    config, adapter = module.config, adapter_for(module)
    visual = adapter.visual_mask(input_ids, config)
    counts = visual.sum(-1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"every row must hold the same number of visual tokens, got {counts.tolist()}")
    mask2d = kwargs.get("attention_mask")
    valid = mask2d.bool() if isinstance(mask2d, torch.Tensor) and mask2d.dim() == 2 else torch.ones_like(visual)
    markers = adapter.marker_mask(input_ids, config)
    state.visual, state.valid, state.n_visual_in = visual, valid, int(counts[0])
    state.text = valid & ~visual & ~markers
    state.n_prompt = input_ids.shape[1]
    state.cur, state.layer_keep, state.inputs, state.kept_per_layer = None, {}, {}, []
    state.embeds, state.renumbered, state.next_position = None, None, {}


def _last_valid(valid: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    return torch.where(valid, positions, -1).amax(-1)  # (B,)


def _renumbered_rotary(state: _State, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """cos, sin for 1-D ``positions`` (B, n) (the same index on the three M-RoPE axes of Qwen models)."""
    return state.rotary(hidden, positions)


def _index_positions(valid: torch.Tensor) -> torch.Tensor:
    """Index of each token among the valid ones of its row, (B, n); padding gets 0."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def _select_mask(mask: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor:
    # mask: (B|1, 1, q, k) bool or float
    if rows is not None:
        mask = _gather(mask, rows, 2)
    return _gather(mask, cols, 3)


def _on_layer(state: _State, layer_idx: int, module, args, kwargs):
    hidden = args[0] if args else kwargs["hidden_states"]
    mask = kwargs.get("attention_mask")
    if not state.prefill:
        keep = state.layer_keep.get(layer_idx)
        if keep is None:
            return None
        if isinstance(mask, torch.Tensor):
            # The decode mask is sized for layer 0's physical cache: map our kept prompt entries
            # into layer 0's coordinates, then append every column after the prompt.
            ref = state.layer_keep.get(0)
            rel = keep if ref is None else torch.searchsorted(ref, keep)
            ref_len = state.n_prompt if ref is None else ref.shape[1]
            tail = torch.arange(ref_len, mask.shape[-1], device=mask.device).expand(keep.shape[0], -1)
            kwargs["attention_mask"] = _select_mask(mask, None, torch.cat([rel, tail], dim=1))
        if state.positions == "renumber":
            # A new token sits right after the valid entries this layer holds.
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            generated = cache.layers[layer_idx].get_seq_length() - state.n_prompt
            steps = torch.arange(hidden.shape[1], device=hidden.device)
            positions = state.next_position[layer_idx][:, None] + generated + steps  # (B, q)
            kwargs["position_embeddings"] = _renumbered_rotary(state, hidden, positions)
        return args, kwargs

    if layer_idx == 0:
        state.embeds = hidden
    cos, sin = kwargs["position_embeddings"]
    if state.renumbered is not None:
        cos, sin = state.renumbered
    elif state.cur is not None:  # bring the full-length side tensors into the current coordinates
        cos, sin = _gather(cos, state.cur, 1), _gather(sin, state.cur, 1)
    cur = (
        state.cur
        if state.cur is not None
        else torch.arange(state.n_prompt, device=hidden.device).expand(hidden.shape[0], -1)
    )
    if layer_idx in state.boundaries:
        ctx = DropContext(
            layer_idx=layer_idx,
            hidden=hidden,
            cos=cos,
            sin=sin,
            visual=_gather(state.visual, cur, 1),
            valid=_gather(state.valid, cur, 1),
            text=_gather(state.text, cur, 1),
            last=_last_valid(_gather(state.valid, cur, 1)),
            n_visual_in=state.n_visual_in,
            layers=state.layers,
            kept=cur,
            embeds=state.embeds,
            prompt_visual=state.visual,
            prompt_text=state.text,
            inputs=state.inputs,
        )
        out = state.plan.select(ctx)
        keep, new_hidden = out if isinstance(out, tuple) else (out, None)
        if keep.shape[1] < hidden.shape[1] or new_hidden is not None:
            hidden = new_hidden if new_hidden is not None else _gather(hidden, keep, 1)
            state.cur = cur = _gather(cur, keep, 1)
            if state.positions == "renumber":
                index = _index_positions(_gather(state.valid, cur, 1))
                state.renumbered = cos, sin = _renumbered_rotary(state, hidden, index)
            else:
                cos, sin = _gather(cos, keep, 1), _gather(sin, keep, 1)
            state.inputs = {}  # stashed tensors are in the old coordinates
    if state.cur is not None:
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, torch.Tensor):
            kwargs["position_ids"] = _gather(position_ids, state.cur, position_ids.dim() - 1)
        if isinstance(mask, torch.Tensor):
            kwargs["attention_mask"] = _select_mask(mask, state.cur, state.cur)
        kwargs["position_embeddings"] = (cos, sin)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and kwargs.get("use_cache", True) is not False:
            _install_logical_layer(cache, layer_idx, state.n_prompt - state.cur.shape[1])
        if state.positions == "renumber":
            state.next_position[layer_idx] = _gather(state.valid, state.cur, 1).sum(-1)
    state.layer_keep[layer_idx] = state.cur
    if layer_idx in state.stash_layers:
        state.inputs[layer_idx] = (hidden, cos, sin)
    n_visual = int(_gather(state.visual, cur, 1)[0].sum())
    state.kept_per_layer.append(n_visual)
    state.owner.stats = {
        "visual_in": state.n_visual_in,
        "visual_kept": n_visual,
        "visual_kept_layer_mean": sum(state.kept_per_layer) / len(state.kept_per_layer),
    }
    if args:
        args = (hidden,) + tuple(args[1:])
    else:
        kwargs["hidden_states"] = hidden
    return args, kwargs


def _install_logical_layer(cache, layer_idx: int, dropped: int) -> None:
    layer = cache.layers[layer_idx]
    if isinstance(layer, _LogicalLayer):
        layer.reset()
        layer.dropped = dropped
        return
    if getattr(layer, "is_sliding", False):
        raise UnsupportedFeature(f"visual-token pruning at a sliding-window layer (layer {layer_idx}) is not supported")
    if type(layer) is not DynamicLayer or layer.is_initialized:
        raise TypeError(
            f"visual-token pruning needs an empty DynamicCache, got {type(layer).__name__} at layer {layer_idx}"
        )
    cache.layers[layer_idx] = _LogicalLayer(dropped)


class _Handle:
    def __init__(self, hooks: list):
        self.hooks = hooks

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def attach(model, plan, owner=None) -> _Handle:
    """Install the drop hooks on a ``Qwen2_5_VLForConditionalGeneration``; ``handle.remove()`` undoes it.

    Args:
        model: the model (or its ``.model``) to patch.
        plan: an object with ``boundaries(num_layers)``, ``stash(num_layers)`` and ``select(ctx)``;
            an optional ``positions`` attribute (``"keep"`` or ``"renumber"``, default ``"keep"``).
        owner: where ``stats`` is written after each prefill (defaults to ``plan``).
    """
    adapter = adapter_for(model)
    inner = adapter.inner(model)
    layers = adapter.language_layers(model)
    num_layers = len(layers)
    boundaries = sorted(plan.boundaries(num_layers))
    deepstack = adapter.deepstack_layers(inner.config)
    if boundaries and deepstack and boundaries[0] <= max(deepstack):
        raise UnsupportedFeature(
            f"pruning before a DeepStack layer is not supported (first pruned layer {boundaries[0]}; "
            f"{adapter.name} adds visual features after layers {list(deepstack)})"
        )
    positions = getattr(plan, "positions", "keep")
    if positions not in ("keep", "renumber"):
        raise ValueError(f"positions must be 'keep' or 'renumber', got {positions!r}")
    state = _State(
        plan=plan,
        owner=owner if owner is not None else plan,
        num_layers=num_layers,
        boundaries=boundaries,
        stash_layers=set(plan.stash(num_layers)),
        positions=positions,
        rotary=adapter.index_rotary(model) if positions == "renumber" else None,
        layers=layers,
    )
    hooks = [inner.register_forward_pre_hook(lambda m, a, k: _on_model(state, m, a, k), with_kwargs=True)]
    for index, layer in enumerate(layers):
        hooks.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, index=index: _on_layer(state, index, m, a, k), with_kwargs=True
            )
        )
    return _Handle(hooks)


# ---------------------------------------------------------------------------------------------
# Pure helpers the plans share.


def attention_rows(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged attention probabilities of the query ``rows`` in one decoder layer.

    Recomputed from the layer's own norm, q/k projections and RoPE (no eager attention maps),
    with causal masking by index and padding keys masked.

    Args:
        layer: a ``Qwen2_5_VLDecoderLayer``.
        hidden: hidden states entering the layer, (B, n, D).
        cos, sin: rotary embeddings for these tokens, (B, n, hd).
        rows: query indices, (B, r).
        valid: False on padding keys, (B, n).

    Returns:
        (B, r, n) attention probabilities averaged over query heads.
    """
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    batch, n, _ = normed.shape
    q = attn.q_proj(_gather(normed, rows, 1)).view(batch, rows.shape[1], -1, attn.head_dim)  # (B, r, Hq, hd)
    k = attn.k_proj(normed).view(batch, n, -1, attn.head_dim)  # (B, n, Hkv, hd)
    if hasattr(attn, "q_norm"):  # per-head query/key norms (Qwen3-VL, Gemma 3) come before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, Hq, r, hd), (B, Hkv, n, hd)
    q, _ = apply_rotary_pos_emb(q, q, _gather(cos, rows, 1), _gather(sin, rows, 1))
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)  # (B, Hq, n, hd)
    scores = (q @ k.transpose(-1, -2)).float() * attn.scaling  # (B, Hq, r, n)
    allowed = (torch.arange(n, device=rows.device)[None, None, :] <= rows[:, :, None]) & valid[:, None, :]
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    # A padding query row has no allowed key: give it zeros rather than NaN.
    return scores.softmax(-1).nan_to_num(0.0).mean(1)


def keep_top_visual(scores: torch.Tensor, visual: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of every non-visual token plus the ``k`` highest-scored visual tokens.

    Args:
        scores: (B, n) scores; only visual entries are compared.
        visual: (B, n) bool.
        k: visual tokens to keep per row.

    Returns:
        (B, n - n_visual + k) sorted indices.
    """
    ranked = scores.float().masked_fill(~visual, float("-inf"))
    top = ranked.topk(k, dim=-1).indices if k > 0 else ranked.new_zeros(ranked.shape[0], 0, dtype=torch.long)
    keep = ~visual
    keep = keep.scatter(1, top, True)
    return keep.nonzero()[:, 1].view(scores.shape[0], -1)


class DropMethod:
    """Mixin for the method dataclasses: ``with method(model): ...`` attaches the plan ``self``."""

    stats: dict

    @contextmanager
    def __call__(self, model) -> Iterator[DropMethod]:
        self.stats = {}
        handle = attach(model, self)
        try:
            yield self
        finally:
            handle.remove()


class SingleLayerDrop(DropMethod):
    """Mixin for methods that drop visual tokens once, entering layer ``self.layer`` (0: the LLM
    inputs), with nothing stashed (DivPrune, TRIM, the random baseline of the prefilling bench)."""

    layer: int

    def boundaries(self, num_layers: int) -> list[int]:
        if not 0 <= self.layer < num_layers:
            raise ValueError(f"{type(self).__name__} layer must lie in [0, {num_layers - 1}], got {self.layer}")
        return [self.layer]

    def stash(self, num_layers: int) -> set[int]:
        return set()
