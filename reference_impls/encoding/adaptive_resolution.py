"""Adaptive resolution: encode each image at a resolution chosen from its content.

Qwen2-VL-style encoders take images at (nearly) native resolution, so the token count grows with
the pixel count whether or not the pixels carry detail. Adaptive-resolution methods decide per
image how many pixels are worth encoding: CARES trains a light selector that predicts the
smallest sufficient resolution, VisionThink starts from a downsampled image and lets the model
ask for the full one, ViCO trains the model to spend fewer tokens on semantically simple images.
Our reference is the training-free core of the idea: measure detail as *edge density* (the
fraction of pixels whose intensity gradient exceeds a threshold), map it to a token fraction
between the budget (for a flat image) and 1 (for a busy one), downsample the image to that grid
and re-encode it with the vision tower.

Papers: arXiv 2510.19496 (CARES), arXiv 2507.13348 (VisionThink), arXiv 2510.12793 (ViCO).

Example:
    >>> import torch
    >>> from reference_impls.encoding.adaptive_resolution import choose_grid, edge_density
    >>> flat, busy = torch.zeros(3, 112, 112), torch.randn(3, 112, 112)
    >>> choose_grid(edge_density(flat), (4, 4), budget=0.25), choose_grid(edge_density(busy), (4, 4), budget=0.25)
    ((2, 2), (4, 4))

Deviations / guesses:
    - Selector: a hand-made edge-density rule instead of the papers' learned selectors or RL
      policies; ``edge_threshold`` and ``saturation`` (the density that earns full resolution)
      are our guesses, in units of the processor's normalised pixel values.
    - Budget: ``budget`` is the token fraction a perfectly flat image gets; the fraction rises
      linearly with edge density to 1 at ``saturation``, so budget 1.0 changes nothing. The
      pooled grid follows the rounding of :func:`reference_impls.encoding.pooling.pooled_grid`.
    - Re-encoding happens inside the model from ``pixel_values`` (the resized image is rebuilt
      from the patches and bilinearly downsampled with antialiasing), not in the processor, so
      the prompt keeps its original placeholders: the re-encoded tokens take the positions of the
      original grid cells at the centres of the regions they cover (as pooled tokens do), instead
      of the compact positions a natively smaller image would get.
    - Images only; videos pass through unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference_impls.encoding.pooling import pooled_grid

__all__ = ["patches_to_image", "image_to_patches", "edge_density", "choose_grid"]


def patches_to_image(rows: torch.Tensor, grid_hw: tuple[int, int], channels: int, patch: int, merge: int) -> torch.Tensor:
    """Rebuild one image ``(C, H, W)`` from its ``(h*w, C*tp*p*p)`` processor rows (first temporal copy)."""
    h, w = grid_hw
    x = rows.reshape(h // merge, w // merge, merge, merge, channels, -1, patch, patch)[..., 0, :, :]
    # (h/m, w/m, m, m, C, p, p) -> (C, h/m, m, p, w/m, m, p)
    x = x.permute(4, 0, 2, 5, 1, 3, 6)
    return x.reshape(channels, h * patch, w * patch)


def image_to_patches(image: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """The processor's row layout for one ``(C, H, W)`` image: ``(h*w, C*tp*p*p)`` (inverse of above)."""
    c, height, width = image.shape
    h, w = height // patch, width // patch
    x = image.reshape(c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (h/m, w/m, m, m, C, p, p)
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, temporal, -1, -1)
    return x.reshape(h * w, c * temporal * patch * patch)


def edge_density(image: torch.Tensor, edge_threshold: float = 0.1) -> float:
    """Fraction of pixels whose gradient magnitude ``|dx| + |dy|`` of the channel mean exceeds the threshold."""
    gray = image.float().mean(dim=0)  # (H, W)
    dx = (gray[:, 1:] - gray[:, :-1]).abs()[:-1, :]
    dy = (gray[1:, :] - gray[:-1, :]).abs()[:, :-1]
    return float(((dx + dy) > edge_threshold).float().mean())


def choose_grid(density: float, grid_hw: tuple[int, int], budget: float, saturation: float = 0.1) -> tuple[int, int]:
    """Merged-token grid ``(h', w')`` for an image of ``grid_hw`` merged tokens and edge ``density``.

    The token fraction is ``budget + (1 - budget) * min(1, density / saturation)``; the grid is
    :func:`~reference_impls.encoding.pooling.pooled_grid` of that fraction.
    """
    fraction = budget + (1.0 - budget) * min(1.0, density / saturation)
    return pooled_grid(grid_hw[0], grid_hw[1], min(1.0, fraction))
