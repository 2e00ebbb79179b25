"""Projector pooling: average-pool neighbouring visual tokens on the image grid (modality adapters).

The projector between the vision encoder and the language model is the cheapest place to cut
visual tokens: instead of one language-model token per patch, it can emit one per pooled
neighbourhood. DeCo argues that this compression should be plain 2-D adaptive average pooling
at the patch level, leaving semantic abstraction to the language model; LDP (MobileVLM V2) and
Honeybee's locality-preserving projectors downsample the grid with pooling or strided
convolution; Qwen2.5-VL's own merger already fuses 2x2 patches into one token. Here we add one
more, training-free, 2-D adaptive average pooling of the *merged* tokens of each image (and each
video frame), with the pooled grid chosen from the budget.

Papers: arXiv 2405.20985 (DeCo), arXiv 2402.03766 (MobileVLM V2, LDP), arXiv 2312.06742
(Honeybee), arXiv 2502.13923 (Qwen2.5-VL, the 2x2 merger).

Upstream: yaolinli/DeCo README.md @ 103416e7fc9106205712152252245fe3f1979ad7 (``AvgPoolProjector``,
the only public DeCo code: ``nn.AdaptiveAvgPool2d`` over the row-major patch grid). Our pooling is
the same operation per image and frame (parity test in ``tests/encoding/test_parity.py``).

Examples:
    >>> import torch
    >>> from reference_impls.encoding.pooling import pool_tokens, pooled_grid
    >>> pooled_grid(8, 8, 0.25)
    (4, 4)
    >>> feats, rep = pool_tokens(torch.randn(64, 16), (1, 8, 8), (4, 4))
    >>> feats.shape, rep[:3].tolist()
    (torch.Size([16, 16]), [0, 2, 4])

    With a model (any Qwen2.5-VL, here a tiny random one)::

        from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
        model = tiny_qwen25vl(); inputs = tiny_inputs(model, grids=((8, 8),))
        method = ProjectorPooling(budget=0.25)
        with method(model):
            out = model.generate(**inputs, max_new_tokens=3)
        method.stats  # {'visual_in': 16, 'visual_kept': 4}

Deviations / guesses:
    - The papers train their projector with the pooling in place; we pool the features of a
      model trained without it (the training-free use of the idea), so accuracy drops sooner.
    - Where: DeCo pools the ViT patch features before its MLP projector; Qwen2.5-VL's projector
      is the 2x2 merger, so we pool its outputs (the merged tokens).
    - Grid: DeCo pools a square grid to a square ``sqrt(query_num)`` side; we shrink both sides
      of any grid by the budget (next item).
    - Budget to grid: each side shrinks by ``sqrt(budget)``, rounded half up, at least 1 (see
      :func:`pooled_grid`); when the sides do not divide, the windows of
      ``adaptive_avg_pool2d`` overlap by one token.
    - Position (our choice): a pooled token takes the 3-D position of its window's centre member
      (the upper-left one of the middle pair when the window side is even), so pooled tokens stay
      on the original grid and in raster order. Videos are pooled frame by frame; their temporal
      ids are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.registry import register

__all__ = ["pooled_grid", "window_centres", "pool_tokens", "ProjectorPooling"]


def pooled_grid(h: int, w: int, budget: float) -> tuple[int, int]:
    """The pooled grid for an ``(h, w)`` grid of merged tokens at ``budget`` (fraction kept).

    Both sides shrink by ``sqrt(budget)`` and round half up, with at least one row and column:
    ``h' = max(1, floor(h * sqrt(budget) + 0.5))``. The kept count ``h' * w'`` therefore equals
    ``budget * h * w`` only up to this rounding (exactly when ``h * sqrt(budget)`` and
    ``w * sqrt(budget)`` are integers).
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    scale = math.sqrt(budget)
    return max(1, min(h, math.floor(h * scale + 0.5))), max(1, min(w, math.floor(w * scale + 0.5)))


def window_centres(size: int, out: int) -> torch.Tensor:
    """Centre member of each of the ``out`` adaptive-pooling windows over ``size`` cells. ``(out,)``."""
    # adaptive_avg_pool windows are [floor(i*size/out), ceil((i+1)*size/out))
    i = torch.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    return start + (end - start - 1) // 2


def pool_tokens(
    x: torch.Tensor, grid: tuple[int, int, int], out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool one item's merged tokens on its grid, frame by frame.

    Args:
        x: ``(t*h*w, D)`` post-merger features of one image or video, raster order.
        grid: ``(t, h, w)`` in merged-token units.
        out_hw: pooled ``(h', w')`` per frame (see :func:`pooled_grid`).

    Returns:
        ``(t*h'*w', D)`` pooled features and ``(t*h'*w',)`` representative indices into the
        ``t*h*w`` tokens (each window's centre member), ascending.
    """
    t, h, w = grid
    oh, ow = out_hw
    frames = x.reshape(t, h, w, -1).permute(0, 3, 1, 2)  # (t, D, h, w)
    pooled = F.adaptive_avg_pool2d(frames, (oh, ow))  # (t, D, h', w')
    pooled = pooled.permute(0, 2, 3, 1).reshape(t * oh * ow, -1)
    rows, cols = window_centres(h, oh).to(x.device), window_centres(w, ow).to(x.device)
    frame = torch.arange(t, device=x.device).view(t, 1, 1) * (h * w)
    rep = (frame + rows.view(1, oh, 1) * w + cols.view(1, 1, ow)).reshape(-1)
    return pooled, rep


@register("projector-pooling", family="modality-adapters", kind="visual-token")
@dataclass
class ProjectorPooling(EncodingMethod):
    """Adaptive average pooling of every image's (and video frame's) merged tokens.

    ``budget`` sets the pooled grid per item (:func:`pooled_grid`); ``with method(model):``
    applies it and sets ``method.stats``.
    """

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        t, h, w = item.grid
        out_hw = pooled_grid(h, w, self.budget)
        if out_hw == (h, w):
            return keep_all(item)
        return pool_tokens(item.features, item.grid, out_hw)
