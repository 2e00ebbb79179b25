"""Operation skipping (GSOP-style): every visual token is kept, some of its operations are skipped.

Beyond Token Pruning: Operation Pruning in Vision-Language Models (GSOP). Token pruning removes a
visual token from every operation of every later layer; operation pruning instead removes single
*operations*: in one decoder layer, one group of tokens may skip serving as keys/values, skip
computing its own attention update (as queries), or skip the FFN, while it stays in the sequence
for the other operations and layers. A token whose query and FFN are skipped in a layer keeps its
hidden state unchanged through that layer (the residual), yet text tokens still attend to it.
The authors search (greedily, on calibration data) which (layer, token group, operation) triples
to prune; this module applies a given set of triples, by default a fixed schedule: the visual
tokens skip their query and FFN operations in the deeper ``1 - budget`` share of the layers.

Paper: arXiv 2507.02909 (Fine-grained Token Allocation Via Operation Pruning for Efficient MLLMs).

Upstream: zxcvfd13502/GSOP ``LLaVA/llava/model/language_model/modeling_llama.py``
(``LlamaDecoderLayer.process_indices`` and ``forward``, ``LlamaAttention.forward`` with
``gsop_indices``) @ aa581605bbae0508acc0e4977a298f30d1b864f0, and the FLOP count of
``LLaVA/llava/model/language_model/stamp_infer_utils.py`` (``get_tflops_strategy``: operation 0 =
keys/values, 1 = queries, 2 = FFN). Same rule: per layer, the index sets of keys/values, queries and
FFN tokens are all tokens minus the groups whose operation is skipped; queries keep their original
positions (RoPE at the original index), the attention update is added to the residual of the
query tokens only, the FFN update to the FFN tokens only; prefill only (decoding is unchanged).
Parity test: ``tests/prefilling/test_op_skip.py`` re-implements that layer (eager attention with
the additive mask sliced to the query rows) and the index sets, and compares on a tiny model.

Examples:
    >>> import torch
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.op_skip import OperationSkip
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> inputs = tiny_inputs(model)
    >>> method = OperationSkip(budget=0.5)
    >>> with method(model):
    ...     out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    >>> method.stats["visual_kept"] == method.stats["visual_in"], method.stats["skipped_layers"]
    (True, [2, 3])

Deviations:
    - Training-free, as upstream (GSOP is tuning-free), but with a fixed policy instead of the
      searched one: upstream's greedy search needs calibration runs per model and its stored
      policies are for LLaVA-1.5; ``budget`` is the fraction of leading layers that compute every
      operation of the visual tokens (``round(budget * L)``), the rest skip ``ops``. An explicit
      upstream-style policy can be given as ``policy`` (``(layer, op)`` pairs).
    - One token group, all visual tokens: upstream also splits the image tokens into groups ranked
      by the vision encoder's CLS attention (Qwen2.5-VL has no CLS token).
    - The key/value operation (upstream's operation 0) is not offered: skipping it would give the
      layers caches of different lengths; ``ops`` takes ``"query"`` and ``"mlp"``.
    - Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with a boolean
      mask (upstream: eager softmax with an additive mask): equal up to float rounding. The query
      rows of the mask the model built for the layer are used as given (causal, a sliding window,
      or Gemma 3 / PaliGemma's bidirectional image blocks); without one, causal by index.
    - Architectures (upstream: LLaMA in LLaVA-1.5): every family of
      :mod:`reference_impls.common.architectures` with self-attention layers. :func:`skip_layer`
      rebuilds the layer from its parts: per-head q/k norms when the attention has them (Qwen3-VL,
      Gemma 3), and the adapter's ``decoder_norms`` ("sandwich" for Gemma 3's extra norms).
      Attention-logit soft-capping (Gemma 2) is refused; Mllama (cross-attention) is refused by
      its adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from reference_impls.common.architectures import UnsupportedFeature, adapter_for
from reference_impls.registry import register

__all__ = ["OPS", "OperationSkip", "operation_indices", "skip_layer", "skipped_layers", "visual_flop_fraction"]

OPS = ("kv", "query", "mlp")
"""Upstream's operations 0, 1, 2: serve as keys/values, compute the attention update, run the FFN."""


def operation_indices(
    n: int, groups: Sequence[torch.Tensor], skipped: Sequence[tuple[int, str]], device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted token indices that take part in each operation of one layer.

    Args:
        n: tokens in the sequence.
        groups: token-index groups (here one: the visual tokens).
        skipped: ``(group, op)`` pairs skipped in this layer, ``op`` one of :data:`OPS`.

    Returns:
        ``(kv, query, mlp)`` index tensors: every token minus the groups skipping that operation.
    """
    keep = torch.ones(len(OPS), n, dtype=torch.bool, device=device)  # (3, n)
    for group, op in skipped:
        keep[OPS.index(op), groups[group]] = False
    return tuple(row.nonzero()[:, 0] for row in keep)  # type: ignore[return-value]


def skip_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    query: torch.Tensor,
    mlp: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache=None,
    norms: str = "pre",
) -> torch.Tensor:
    """One decoder layer in which only the ``query`` tokens get an attention update and only the
    ``mlp`` tokens an FFN update; every token serves as key/value (and is written to ``cache``).

    Args:
        layer: a transformers decoder layer with ``input_layernorm``, ``self_attn`` (``q/k/v/o_proj``,
            optional per-head ``q_norm``/``k_norm`` before RoPE), ``post_attention_layernorm`` and
            ``mlp`` (LLaMA, Qwen2/2.5/3-VL, Gemma; Gemma 3 with ``norms="sandwich"``).
        hidden: (B, N, D) hidden states entering the layer.
        position_embeddings: rotary ``(cos, sin)``, each (B, N, hd).
        query: (nq,) sorted indices of the tokens that compute attention.
        mlp: (nm,) sorted indices of the tokens that run the FFN.
        attention_mask: optional (B|1, 1, N, N) mask the model built for this layer (bool True =
            attend, or additive float; causal, sliding-window or with bidirectional image blocks);
            None means causal.
        cache: optional transformers cache, empty (a prefill); the layer's keys/values are stored.
        norms: ``"pre"`` (norm before attention and before the FFN) or ``"sandwich"`` (Gemma 2/3: also
            ``post_attention_layernorm`` on the attention output and ``pre/post_feedforward_layernorm``
            around the FFN); see :attr:`~reference_impls.common.architectures.Adapter.decoder_norms`.

    Returns:
        (B, N, D) hidden states leaving the layer.
    """
    if norms not in ("pre", "sandwich"):
        raise ValueError(f"norms must be 'pre' or 'sandwich', got {norms!r}")
    attn = layer.self_attn
    if getattr(attn, "attn_logit_softcapping", None) is not None:
        raise UnsupportedFeature("operation skipping with attention-logit soft-capping (Gemma 2) is not supported")
    batch, n, _ = hidden.shape
    normed = layer.input_layernorm(hidden)
    cos, sin = position_embeddings
    q = attn.q_proj(normed[:, query]).view(batch, query.numel(), -1, attn.head_dim)  # (B, nq, Hq, hd)
    k = attn.k_proj(normed).view(batch, n, -1, attn.head_dim)  # (B, N, Hkv, hd)
    v = attn.v_proj(normed).view(batch, n, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, N, hd)
    if hasattr(attn, "q_norm"):  # per-head query/key norms (Qwen3-VL, Gemma 3) come before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, Hq, nq, hd), (B, Hkv, N, hd)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, query], sin[:, query])  # original positions
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx)
    # Prefill only (the patch never calls this with cached tokens). The model's own mask rows of the
    # queries; without one, causal by index.
    if attention_mask is None:
        allowed = (torch.arange(n, device=hidden.device)[None, :] <= query[:, None])[None, None]  # (1, 1, nq, N)
    else:
        given = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        allowed = given[:, :, query]  # (B|1, 1, nq, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling, enable_gqa=True)
    out = attn.o_proj(out.transpose(1, 2).reshape(batch, query.numel(), -1))  # (B, nq, D)
    if norms == "sandwich":
        out = layer.post_attention_layernorm(out)
    hidden = hidden.index_add(1, query, out)
    if norms == "sandwich":
        update = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden[:, mlp])))
    else:
        update = layer.mlp(layer.post_attention_layernorm(hidden[:, mlp]))  # (B, nm, D)
    return hidden.index_add(1, mlp, update)


def skipped_layers(budget: float, num_layers: int) -> list[int]:
    """The deeper layers that skip the visual tokens' operations: all from ``round(budget * L)`` on."""
    return list(range(round(budget * num_layers), num_layers))


def visual_flop_fraction(config, skipped: dict[int, tuple[str, ...]]) -> float:
    """Fraction of the visual tokens' linear-layer FLOPs (projections and FFN; attention scores
    left out) still computed when layer ``i`` skips the operations ``skipped[i]`` (upstream's count:
    keys/values = k, v projections; queries = q, o projections; FFN = gate, up, down)."""
    d = config.hidden_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    cost = {
        "kv": 2 * d * config.num_key_value_heads * hd,
        "query": 2 * d * config.num_attention_heads * hd,
        "mlp": 3 * d * config.intermediate_size,
    }
    per_layer = sum(cost.values())
    layers = config.num_hidden_layers
    saved = sum(cost[op] for ops in skipped.values() for op in ops)
    return 1.0 - saved / (per_layer * layers)


@dataclass
class _State:
    visual: torch.Tensor | None = None
    skipped: dict[int, tuple[str, ...]] = field(default_factory=dict)


@register("op-skip", family="computation-skipping", kind="visual-token")
@dataclass
class OperationSkip:
    """Visual tokens skip their query and/or FFN operations in some layers (none is dropped).

    Args:
        budget: fraction of leading LLM layers that compute every visual operation (1.0 = unchanged).
        ops: operations the visual tokens skip in the other layers (``"query"``, ``"mlp"``).
        policy: explicit ``(layer, op)`` pairs to skip instead of the budget schedule.
    """

    budget: float = 0.5
    ops: tuple[str, ...] = ("query", "mlp")
    policy: tuple[tuple[int, str], ...] | None = None
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def schedule(self, num_layers: int) -> dict[int, tuple[str, ...]]:
        """layer -> operations the visual tokens skip there."""
        if self.policy is not None:
            pairs = list(self.policy)
        else:
            pairs = [(layer, op) for layer in skipped_layers(self.budget, num_layers) for op in self.ops]
        schedule: dict[int, tuple[str, ...]] = {}
        for layer, op in pairs:
            if op not in ("query", "mlp"):
                raise ValueError(f"op must be 'query' or 'mlp' (keys/values are not skipped here), got {op!r}")
            if not 0 <= layer < num_layers:
                raise ValueError(f"layer {layer} outside 0..{num_layers - 1}")
            schedule[layer] = tuple(sorted(set(schedule.get(layer, ())) | {op}))
        return dict(sorted(schedule.items()))

    @contextmanager
    def __call__(self, model) -> Iterator[OperationSkip]:
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must lie in (0, 1], got {self.budget}")
        adapter = adapter_for(model)
        inner = adapter.inner(model)
        layers = adapter.language_layers(model)
        text_config = adapter.text_model(model).config
        state = _State(skipped=self.schedule(len(layers)))
        self.stats = {}

        def on_model(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            ids = kwargs.get("input_ids", args[0] if args else None)
            if (cache is not None and cache.get_seq_length() > 0) or ids is None or ids.shape[1] == 1:
                state.visual = None  # decoding: unchanged, as upstream
                return
            visual = adapter.visual_mask(ids, module.config)  # (B, N)
            if not bool((visual == visual[:1]).all()):
                raise ValueError("operation skipping needs the visual tokens at the same positions in every row")
            state.visual = visual[0]
            n_visual = int(visual[0].sum())
            self.stats = {
                "visual_in": n_visual,
                "visual_kept": n_visual,
                "skipped_layers": sorted(state.skipped),
                "visual_flops": visual_flop_fraction(text_config, state.skipped),
            }

        def patched(index: int, original):
            def forward(hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
                if state.visual is None or index not in state.skipped or hidden_states.shape[1] == 1:
                    return original(
                        hidden_states,
                        attention_mask=attention_mask,
                        position_embeddings=position_embeddings,
                        cache=cache,
                        **kwargs,
                    )
                groups = [state.visual.nonzero()[:, 0]]
                _, query, mlp = operation_indices(
                    hidden_states.shape[1], groups, [(0, op) for op in state.skipped[index]], hidden_states.device
                )
                return skip_layer(
                    layers[index],
                    hidden_states,
                    position_embeddings,
                    query,
                    mlp,
                    attention_mask,
                    cache,
                    adapter.decoder_norms,
                )

            return forward

        hook = inner.register_forward_pre_hook(on_model, with_kwargs=True)
        for index, layer in enumerate(layers):
            layer.forward = patched(index, layer.forward)
        try:
            yield self
        finally:
            hook.remove()
            for layer in layers:
                del layer.forward
