"""The frozen diffusion backbone: a small diffusers ``UNet2DModel`` with a DDPM noise schedule.

One place for the U-Net architecture, the ε-prediction training loss (DDPM) and deterministic
DDIM reconstruction from a partially noised image, so the pretraining script, every continual
method and the anomaly scorer share them. The committed checkpoint was produced by
``python -m reference_impls.continual_ad.pretrain`` on a texture family disjoint from ProcAD.

Examples:
    >>> from reference_impls.continual_ad.diffusion import build_unet, make_schedule
    >>> unet, schedule = build_unet(sample_size=16), make_schedule()

Deviations / guesses: DDIM is written out here over ``alphas_cumprod`` of diffusers'
``DDPMScheduler`` (timesteps evenly spaced from ``t0`` down to 0) instead of stepping
``DDIMScheduler``, because partial noising starts at an arbitrary ``t0``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

__all__ = ["CHECKPOINT", "build_unet", "make_schedule", "load_pretrained", "denoising_loss", "ddim_reconstruct"]

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "procad_unet"


def build_unet(sample_size: int = 32, channels: tuple[int, int] = (32, 64)) -> UNet2DModel:
    """The reference U-Net (``hfolb/README.md`` §9): channels (32, 64), one resnet per level, coarse attention.

    About 0.7 M parameters. Tests pass smaller ``channels`` (e.g. (8, 16)) for speed.
    """
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=min(8, channels[0] // 2),
        attention_head_dim=channels[0],
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def make_schedule(num_train_timesteps: int = 200) -> DDPMScheduler:
    """Linear β from 1e-4 to 0.02 over ``num_train_timesteps`` steps (ε-prediction)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


def load_pretrained(path: str | Path | None = None) -> UNet2DModel:
    """Load the frozen U-Net (default: the committed ProcAD-pretraining checkpoint), eval mode, no grads."""
    unet = UNet2DModel.from_pretrained(str(path or CHECKPOINT))
    unet.eval().requires_grad_(False)
    return unet


def denoising_loss(
    unet: torch.nn.Module,
    x: torch.Tensor,
    schedule: DDPMScheduler,
    *,
    generator: torch.Generator | None = None,
    t_max: int | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    """‖ε − ε_θ(√ᾱ_τ x + √(1−ᾱ_τ) ε, τ)‖² with τ uniform in [0, t_max) (default all training steps).

    Args:
        unet: ε-predictor called as ``unet(x_t, τ).sample``.
        x: clean images (B, 3, H, W) in [-1, 1].
        schedule: the DDPM schedule.
        generator: seeds τ and ε.
        t_max: upper bound of τ.
        reduce: mean over everything; otherwise per-image losses (B,).
    """
    t_max = t_max or schedule.config.num_train_timesteps
    tau = torch.randint(0, t_max, (x.shape[0],), generator=generator)  # (B,)
    noise = torch.randn(x.shape, generator=generator)
    x_t = schedule.add_noise(x, noise, tau)
    error = (unet(x_t, tau).sample - noise).pow(2)  # (B, 3, H, W)
    return error.mean() if reduce else error.flatten(1).mean(1)


@torch.no_grad()
def ddim_reconstruct(
    unet: torch.nn.Module,
    x: torch.Tensor,
    schedule: DDPMScheduler,
    *,
    t0: int,
    steps: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise ``x`` (B, 3, H, W) to step ``t0`` and run ``steps`` deterministic DDIM steps (η = 0) back to 0.

    ``noise`` (broadcastable to ``x``) overrides the draw from ``generator``.
    """
    abar = schedule.alphas_cumprod.to(x.dtype)  # (T,)
    times = torch.linspace(t0, 0, steps + 1).round().long().tolist()  # t0 > ... > 0
    noise = torch.randn(x.shape, generator=generator) if noise is None else noise
    sample = abar[t0].sqrt() * x + (1 - abar[t0]).sqrt() * noise
    for t, t_next in zip(times[:-1], times[1:]):
        eps = unet(sample, torch.full((x.shape[0],), t)).sample
        x0 = (sample - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        a_next = abar[t_next] if t_next > 0 else torch.tensor(1.0)
        sample = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return sample
