"""FastV: prune visual tokens once, after layer K, by how much the last prompt token attends to them.

An Image is Worth 1/2 Tokens After Layer 2 (FastV). The authors observe that after the first
couple of LLM layers the visual tokens receive very little attention, so they can be dropped
for the rest of the forward pass. At layer K-1 the attention row of the last prompt token is
averaged over heads and restricted to the visual columns; the top-scored visual tokens survive
and every layer from K on (and its KV cache) sees only those, plus all text tokens.

Paper: arXiv 2403.06764

Upstream: pkunlp-icler/FastV ``src/transformers/src/transformers/models/llama/modeling_llama.py``
(``LlamaModel.forward``, the ``FASTV_INPLACE`` branch) @ eca14d61dc4706059f007de7fb0c75fecff5e00a.
Same rule: at layer K the head-mean attention of layer K-1, last token's row, ranks the image
tokens; the top ``ATTENTION_RANK`` stay in sequence order with their original positions
(``position_ids = keep_indexs``). Parity test: the same logits (float tolerance) on a tiny model
for K = 1, 2, 3.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.fastv import FastV
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> inputs = tiny_inputs(model)
    >>> method = FastV(budget=0.25, layer=2)
    >>> with method(model):
    ...     out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    >>> method.stats["visual_kept"], method.stats["visual_in"]
    (4, 16)

Deviations:
    - The layer K-1 attention row is recomputed from that layer's norm, q/k projections and RoPE
      in a hook (no eager attention maps), so it equals what eager attention would return.
    - ``budget`` is the fraction of visual tokens kept (the paper's R is the fraction dropped;
      upstream takes the absolute count ``ATTENTION_RANK``): ``round(N * budget)``, at least 1.
      The paper's setting K=2, R=50% is ``FastV(budget=0.5, layer=2)``.
    - The "last prompt token" is the last non-padding token of the prompt, wherever the image
      sits (the question may come before the image).
    - Works on Qwen2.5-VL's merged visual tokens (images and videos; several per prompt are
      ranked jointly, as FastV ranks one image's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, DropMethod, attention_rows, keep_top_visual
from reference_impls.registry import register

__all__ = ["FastV", "fastv_scores"]


def fastv_scores(ctx: DropContext, score_layer: int) -> torch.Tensor:
    """Head-averaged attention of the last prompt token in ``score_layer`` to every token.

    Args:
        ctx: the drop context at the pruning layer (its ``inputs`` hold ``score_layer``'s input).
        score_layer: the layer whose attention is read (K-1 in FastV).

    Returns:
        (B, n) attention probabilities of the last prompt token.
    """
    hidden, cos, sin = ctx.inputs[score_layer]
    return attention_rows(ctx.layers[score_layer], hidden, cos, sin, ctx.last[:, None], ctx.valid)[:, 0]


@register("fastv", family="prefilling-attention-guided", kind="visual-token")
@dataclass
class FastV(DropMethod):
    """FastV configuration.

    Args:
        budget: fraction of visual tokens kept from layer ``layer`` on (0 < budget <= 1).
        layer: K, the first layer that sees the pruned sequence (>= 1).
    """

    budget: float = 0.5
    layer: int = 2
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def boundaries(self, num_layers: int) -> list[int]:
        if not 1 <= self.layer < num_layers:
            raise ValueError(f"FastV layer must lie in [1, {num_layers - 1}], got {self.layer}")
        return [self.layer]

    def stash(self, num_layers: int) -> set[int]:
        return {self.layer - 1}

    def select(self, ctx: DropContext) -> torch.Tensor:
        scores = fastv_scores(ctx, self.layer - 1)  # (B, n)
        return keep_top_visual(scores, ctx.visual, keep_count(ctx.n_visual_in, self.budget))
