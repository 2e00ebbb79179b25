"""PyramidDrop: drop visual tokens in stages, a fixed ratio at each stage boundary.

PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction. Visual redundancy grows with depth, so the LLM is split into stages and, at the
first layer of each stage, a fraction of the remaining visual tokens is dropped; the token
count shrinks like a pyramid. The ranking at a boundary is a light-weight attention: the
boundary layer's input norm, q/k projections and RoPE are applied to the incoming hidden
states and the last instruction token's attention to the visual tokens (head-averaged) is used.

Paper: arXiv 2410.17247 (code: Cooperx521/PyramidDrop).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.pyramiddrop import PyramidDrop
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> method = PyramidDrop(budget=0.25)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]
    4

Deviations / guesses:
    - ``budget`` is the fraction of visual tokens left after the last stage; each of the S stages
      keeps ``budget ** (1/S)`` of the remaining tokens (the paper fixes lambda = 0.5 per stage,
      i.e. ``budget = 0.125`` with three boundaries). ``stats["visual_kept_layer_mean"]`` gives
      the layer-averaged count the paper's FLOPs follow.
    - Boundaries are given as fractions of the depth (paper: layers 8, 16, 24 of 32) and rounded
      to the model's depth; duplicates after rounding are merged.
    - The last instruction token is the last non-padding prompt token, found from the ids and
      the attention mask, wherever the image sits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, DropMethod, attention_rows, keep_top_visual
from reference_impls.registry import register

__all__ = ["PyramidDrop", "stage_layers"]


def stage_layers(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """Boundary layers for depth fractions, rounded, unique, inside ``[1, num_layers - 1]``."""
    layers = sorted({min(num_layers - 1, max(1, round(f * num_layers))) for f in fractions})
    return layers


@register("pyramiddrop", family="prefilling-attention-guided", kind="visual-token")
@dataclass
class PyramidDrop(DropMethod):
    """PyramidDrop configuration.

    Args:
        budget: fraction of visual tokens left after the last stage (0 < budget <= 1).
        boundaries: stage boundaries as fractions of the depth (paper: 8/32, 16/32, 24/32).
    """

    budget: float = 0.125
    boundaries_frac: tuple[float, ...] = (0.25, 0.5, 0.75)
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def boundaries(self, num_layers: int) -> list[int]:
        self._layers = stage_layers(self.boundaries_frac, num_layers)
        return self._layers

    def stash(self, num_layers: int) -> set[int]:
        return set()

    def select(self, ctx: DropContext) -> torch.Tensor:
        stage = self._layers.index(ctx.layer_idx) + 1
        fraction = self.budget ** (stage / len(self._layers))
        # The boundary layer's own q/k on its incoming hidden states, last instruction token.
        scores = attention_rows(ctx.layers[ctx.layer_idx], ctx.hidden, ctx.cos, ctx.sin, ctx.last[:, None], ctx.valid)[:, 0]
        return keep_top_visual(scores, ctx.visual, keep_count(ctx.n_visual_in, fraction))
