"""PyramidDrop: drop visual tokens in stages, a fixed ratio at each stage boundary.

PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction. Visual redundancy grows with depth, so the LLM is split into stages and, at the
first layer of each stage, a fraction of the remaining visual tokens is dropped; the token
count shrinks like a pyramid. The ranking at a boundary is a light-weight attention: the
boundary layer's input norm, q/k projections and RoPE are applied to the incoming hidden
states and the last instruction token's attention to the visual tokens (head-averaged) is used.

Paper: arXiv 2410.17247

Upstream: Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward``,
``pdrop_rank_drop``) and ``scripts/v1_5/pdrop_eval/textvqa.sh`` @ 3f89f94f899d3fea3c37922d0cd8db45e9884c08.
Same rule by default: after layer ``b - 1`` (``b`` in ``layer_list = [8, 16, 24]``) the last
instruction token's head-mean attention in layer ``b`` ranks the visual tokens, and stage ``s``
(1, 2, 3) keeps ``int(N * ratio_s)`` of the ``N`` original ones (``ratio_s`` = 0.5, 0.25,
0.125, i.e. ``lambda = 0.5``), sorted back into sequence order.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.pyramiddrop import PyramidDrop
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> method = PyramidDrop(budget=0.25)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]
    4
    >>> stage_keep_count(576, 0.125 ** (1 / 3)), stage_keep_count(100, 0.125 ** (1 / 3))  # int(), not round()
    (288, 50)

Deviations:
    - Positions (``positions="keep"`` by default; ``"renumber"`` is upstream's rule). Upstream
      renumbers the tokens 0..n-1 after each drop (``position_ids[i, :cur_len] = arange``) and
      shifts decoding positions down by the dropped count per stage. On LLaVA that rule is the
      model's own position rule (position = index) re-applied to the shorter sequence, and it
      pulls the question closer to the kept image tokens (an image spans 576 positions there).
      Qwen2.5-VL's rule is M-RoPE: an image's tokens get 3-D (t, h, w) positions on its grid and
      the text after it starts ``max(h, w)`` positions later, not ``h * w`` (16 positions for a
      16 x 16 grid of 256 tokens). That rule cannot be re-applied to a pruned image (the kept
      tokens form no grid), and the literal "index" rule replaces every visual token's 2-D
      position by a 1-D one the model never saw for image tokens and moves the question
      *farther* from the image (from ``max(h, w)`` to the number of kept tokens) instead of
      closer. Keeping the original positions is what the unpruned model computes for these
      tokens, so it is our default; ``positions="renumber"`` implements upstream's literal rule
      for comparison (and SparseVLM+'s own code switched to keeping positions, see
      :mod:`~reference_impls.prefilling.sparsevlm`).
    - ``budget`` is the fraction of visual tokens left after the last stage; stage ``s`` of
      ``S`` keeps ``int(N * budget ** (s / S))`` (upstream's explicit ratio list; the default
      ``budget = 0.125`` with three boundaries is the paper's ``lambda = 0.5``). Unlike upstream,
      at least one visual token is kept. ``stats["visual_kept_layer_mean"]`` gives the
      layer-averaged count the paper's FLOPs follow.
    - Boundaries are given as fractions of the depth (upstream: layers 8, 16, 24 of 32) and
      rounded to the model's depth; duplicates after rounding are merged.
    - The last instruction token is the last non-padding prompt token, found from the ids and
      the attention mask, wherever the image sits. Several images are ranked jointly (upstream
      handles one image per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.prefilling._layer_drop import DropContext, DropMethod, Positions, attention_rows, keep_top_visual
from reference_impls.registry import register

__all__ = ["PyramidDrop", "stage_layers", "stage_keep_count"]


def stage_layers(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """Boundary layers for depth fractions, rounded, unique, inside ``[1, num_layers - 1]``."""
    layers = sorted({min(num_layers - 1, max(1, round(f * num_layers))) for f in fractions})
    return layers


def stage_keep_count(n: int, fraction: float) -> int:
    """Visual tokens a stage keeps out of the ``n`` original ones: ``int(n * fraction)``, >= 1.

    Upstream truncates (``int(cur_image_token * ratio)``); the 1e-9 absorbs the rounding of
    ``budget ** (s / S)`` (e.g. 0.49999999999999994 for 0.5), so exact ratios give exact counts.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, max(1, int(n * fraction + 1e-9)))


@register("pyramiddrop", family="prefilling-attention-guided", kind="visual-token")
@dataclass
class PyramidDrop(DropMethod):
    """PyramidDrop configuration.

    Args:
        budget: fraction of visual tokens left after the last stage (0 < budget <= 1).
        boundaries_frac: stage boundaries as fractions of the depth (paper: 8/32, 16/32, 24/32).
        positions: ``"keep"`` the original M-RoPE positions (default) or ``"renumber"`` them as
            upstream does (see Deviations).
    """

    budget: float = 0.125
    boundaries_frac: tuple[float, ...] = (0.25, 0.5, 0.75)
    positions: Positions = "keep"
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def boundaries(self, num_layers: int) -> list[int]:
        return stage_layers(self.boundaries_frac, num_layers)

    def stash(self, num_layers: int) -> set[int]:
        return set()

    def select(self, ctx: DropContext) -> torch.Tensor:
        layers = self.boundaries(len(ctx.layers))
        stage = layers.index(ctx.layer_idx) + 1
        fraction = self.budget ** (stage / len(layers))
        # The boundary layer's own q/k on its incoming hidden states, last instruction token.
        layer = ctx.layers[ctx.layer_idx]
        scores = attention_rows(layer, ctx.hidden, ctx.cos, ctx.sin, ctx.last[:, None], ctx.valid)[:, 0]
        return keep_top_visual(scores, ctx.visual, stage_keep_count(ctx.n_visual_in, fraction))
