"""PAI attention intervention: amplify the attention the generated token pays to the image.

Idea: object hallucination grows as a model attends to its own text more than to the image
("text inertia"). PAI raises the pre-softmax attention scores of the image tokens for the token
being generated, ``s_img <- s_img + alpha |s_img|`` in decoder layers ``start_layer`` to
``end_layer - 1``, so every new token looks more at the image, without training. We implement
this re-weighting only (we did not build OPERA's over-trust penalty in beam search).

Paper: arXiv 2407.21771 ("Paying More Attention to Image: A Training-Free Method for
Alleviating Hallucination in LVLMs").
Upstream: LALBJ/PAI attention.py (``llama_new_forward``, ``llama_modify``) @
4a085d1e39dae0d95d2fafe6ba24f0f9b8d49023; defaults from chair_eval.py and the README commands:
``alpha`` 0.2, ``start_layer`` 2, ``end_layer`` 32 (= every layer of LLaMA-7B from the third on).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl()
    >>> inputs = tiny_inputs(model, grids=((4, 4),))
    >>> with VisualAttentionAmplification(alpha=0.5, start_layer=0)(model):
    ...     ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    >>> ids.shape[1] == inputs["input_ids"].shape[1] + 3
    True

Implementation: a registered attention function (``"atlas_pai"``, masks built as for sdpa) is
switched on for the language model inside ``with method(model)``; a forward pre-hook reads the
visual key positions from ``input_ids`` (image / video token ids in the config) at every prefill
and the cache keeps them aligned during decoding. Layers that are not chosen, and ``alpha == 0``,
go through the unchanged sdpa function. :func:`amplified_attention` is the pure tensor function.

Faithful to upstream: the rule (last query row only, image-key scores ``s + alpha |s|`` after
the scale and before the softmax; upstream adds the mask first, which only differs on keys a
row may not see anyway), the default ``alpha`` 0.2 and the layer range "from layer 2 to the
last" (``end_layer=None``).

Deviations / guesses: PAI's second part, the logits refinement against a text-only forward
(``CFG.py``, ``gamma`` 1.1 in the README commands), is not reproduced -- the contrast idea is
what :mod:`.contrastive_decoding` measures. ``layers`` (off by default) names the layers
explicitly instead of a range. The comparison benchmark runs ``start_layer=0`` (every layer of
the 3-layer captioner; with the default only the last layer would change) at alpha 0.5 and 1.0.

Measured on ToyVLM (comparison benchmark, all layers): a trade-off, not a clear win. alpha 0.5 lowered the
targeted rate from 91% to 70% and alpha 1.0 to 42%. Clean-caption F1 fell to 99 and 90, the
exact-caption rate to 96% and 68%, and POPE F1 from 66.7 to 61 and 58. Restricting it to layers
1-2 had no effect (exploratory run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from reference_impls.common.architectures import adapter_for
from reference_impls.registry import register

__all__ = ["VisualAttentionAmplification", "amplified_attention", "ATTENTION_NAME"]

ATTENTION_NAME = "atlas_pai"


def amplified_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    visual: torch.Tensor,
    alpha: float,
    scaling: float,
    last_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with the image keys' scores raised by ``alpha |score|`` before the softmax.

    Args:
        query: (B, H, q, D); key, value: (B, H, k, D) (KV heads already repeated).
        allowed: (B, 1, q, k) bool, True where a query may attend.
        visual: (B, k) bool, True at image-token keys.
        alpha: amplification (0: plain attention).
        scaling: score scale (``head_dim ** -0.5``).
        last_only: change only the last query row (the token being generated).

    Returns:
        ``(output (B, q, H, D), probabilities (B, H, q, k))``.
    """
    scores = (query @ key.transpose(-1, -2)).float() * scaling  # (B, H, q, k)
    boost = visual[:, None, None, :].to(scores.dtype) * scores.abs() * alpha  # (B, H, q, k)
    if last_only:
        rows = torch.zeros(scores.shape[-2], 1, dtype=scores.dtype)
        rows[-1] = 1
        boost = boost * rows  # (B, H, q, k)
    scores = (scores + boost).masked_fill(~allowed, float("-inf"))
    # Fully masked rows (left padding) would give NaN, which then leaks through the cache.
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: PAI on chosen layers, sdpa everywhere else."""
    setting = getattr(module, "_atlas_pai", None)
    if setting is None or setting["alpha"] == 0:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:  # sdpa_mask skips a plain causal mask
        allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > float("-inf")
    visual = setting["state"]["visual"]  # (B, prompt length)
    visual = torch.nn.functional.pad(visual, (0, k_len - visual.shape[1]), value=False)  # (B, k)
    return amplified_attention(
        query,
        key,
        value,
        allowed.expand(query.shape[0], 1, q_len, k_len),
        visual,
        setting["alpha"],
        scaling,
        setting["last_only"],
    )


AttentionInterface.register(ATTENTION_NAME, _attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@register("pai", family="attention-intervention", kind="hallucination")
@dataclass
class VisualAttentionAmplification:
    """``with VisualAttentionAmplification(alpha)(model):`` decodes with amplified image attention."""

    alpha: float = 0.2
    start_layer: int = 2
    """First decoder layer changed (upstream's ``start_layer``)."""
    end_layer: int | None = None
    """One past the last layer changed (None: the model's last layer, as upstream's 32 on LLaMA-7B)."""
    layers: Sequence[int] | None = None
    """Explicit layers to change instead of the range (not upstream; None: use the range)."""
    last_only: bool = True

    @contextlib.contextmanager
    def __call__(self, model: nn.Module) -> Iterator[nn.Module]:
        adapter = adapter_for(model)
        text_config = model.config.get_text_config()
        layers = adapter.language_layers(model)
        end = len(layers) if self.end_layer is None else self.end_layer
        chosen = range(self.start_layer, end) if self.layers is None else self.layers
        state: dict = {}

        def capture(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if ids is not None and (cache is None or cache.get_seq_length() == 0):
                state["visual"] = adapter.visual_mask(ids, model.config)  # (B, N)

        handle = model.register_forward_pre_hook(capture, with_kwargs=True)
        previous = text_config._attn_implementation
        text_config._attn_implementation = ATTENTION_NAME
        for index in chosen:
            layers[index].self_attn._atlas_pai = {"alpha": self.alpha, "last_only": self.last_only, "state": state}
        try:
            yield model
        finally:
            handle.remove()
            text_config._attn_implementation = previous
            for index in chosen:
                del layers[index].self_attn._atlas_pai
