"""Diffusion reconstruction anomaly scorer: partial noising, DDIM back, pixel and feature error, smoothing.

A diffusion model trained on normal images reconstructs a partially noised input towards the
normal manifold; defects are not reproduced, so the reconstruction error marks them. The
scorer noises an image to ``t0 = 0.3 T``, runs deterministic DDIM (η = 0) back to 0, takes the
channel-mean squared error, optionally adds ``λ_f (1 − cos)`` between the frozen base's
down-block features of the input and of the reconstruction, averages over noise draws, smooths
with a Gaussian and reads the image score as the map maximum (or the mean of the top 1 %).
Every continual method in this package is scored by this one object.

Examples:
    >>> import torch
    >>> from reference_impls.continual_ad.diffusion import build_unet, make_schedule
    >>> from reference_impls.continual_ad.scorer import DiffusionScorer
    >>> maps, scores = DiffusionScorer(ddim_steps=2, n_seeds=1)(build_unet(16), torch.zeros(2, 3, 16, 16), make_schedule())
    >>> maps.shape, scores.shape
    (torch.Size([2, 16, 16]), torch.Size([2]))

Paper: arXiv 2606.02042 (a diffusion U-Net detector; its scoring function is not described in
the abstract, so this is a DDAD-style reconstruction of ours,
``reference_impls/continual_ad/hfolb/README.md`` section 4.7).
Upstream: none followed (the paper's code is not public; we did not compare with DDAD's code,
arXiv 2305.15956: our scorer follows its partial-noising and DDIM reconstruction idea, not its code).

Deviations / guesses: each noise draw is shared by all images (so a score never depends on
which batch or routing group an image is scored in); no DDAD conditioning guidance (w = 0); the feature term uses the outputs
of every down block of the frozen base at τ = 0 (off by default, λ_f = 0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reference_impls.continual_ad.diffusion import ddim_reconstruct
from reference_impls.registry import register

__all__ = ["DiffusionScorer", "gaussian_blur"]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, H, W) maps, reflect padding, kernel radius 3σ."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, maps.shape[-1] - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]


@torch.no_grad()
def _down_features(unet: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    feats = []
    handles = [block.register_forward_hook(lambda m, a, out: feats.append(out[0])) for block in _down_blocks(unet)]
    try:
        unet(x, torch.zeros(x.shape[0], dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return feats


def _down_blocks(model: torch.nn.Module):
    inner = model.base_model.model if hasattr(model, "base_model") else model
    return list(inner.down_blocks)


@register("diffusion-recon", family="diffusion-detectors", kind="continual-ad")
@dataclass
class DiffusionScorer:
    """Reconstruction scorer; call ``scorer(model, images, schedule, base=None) -> (maps, image_scores)``.

    ``base`` is an optional context manager factory that yields the frozen base (needed only
    for the feature term).
    """

    t0_frac: float = 0.3
    ddim_steps: int = 10
    n_seeds: int = 2
    lambda_f: float = 0.0
    sigma: float | None = None
    """Gaussian σ in pixels; None: ``max(1, 4 · size / 256)``."""
    image_score: str = "max"
    """"max" or "topk" (mean of the top ``topk_frac`` of the map)."""
    topk_frac: float = 0.01
    seed: int = 1234
    batch: int = 64

    @torch.no_grad()
    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        schedule,
        base: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (N, H, W) and image scores (N,) of ``images`` (N, 3, H, W) in [-1, 1]."""
        t0 = int(round(self.t0_frac * schedule.config.num_train_timesteps))
        maps = torch.zeros(images.shape[0], *images.shape[-2:])
        for s in range(self.n_seeds):
            # one noise draw per seed, shared by every image: scores do not depend on batching or routing groups
            noise = torch.randn((1, *images.shape[1:]), generator=torch.Generator().manual_seed(self.seed + s))
            for start in range(0, images.shape[0], self.batch):
                x = images[start : start + self.batch]
                recon = ddim_reconstruct(model, x, schedule, t0=t0, steps=self.ddim_steps, noise=noise)
                m = (recon - x).pow(2).mean(1)  # (B, H, W)
                if self.lambda_f > 0:
                    with base() if base is not None else contextlib.nullcontext(model) as frozen:
                        for fa, fb in zip(_down_features(frozen, x), _down_features(frozen, recon)):
                            d = 1 - F.cosine_similarity(fa, fb, dim=1)  # (B, h, w)
                            m = (
                                m
                                + self.lambda_f
                                * F.interpolate(d[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[
                                    :, 0
                                ]
                            )
                maps[start : start + self.batch] += m / self.n_seeds
        sigma = self.sigma if self.sigma is not None else max(1.0, 4 * images.shape[-1] / 256)
        maps = gaussian_blur(maps, sigma)
        flat = maps.flatten(1)
        if self.image_score == "max":
            scores = flat.max(1).values
        else:
            k = max(1, int(round(self.topk_frac * flat.shape[1])))
            scores = flat.topk(k, dim=1).values.mean(1)
        return maps, scores
