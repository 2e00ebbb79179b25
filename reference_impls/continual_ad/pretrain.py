"""Pretrain the frozen ProcAD U-Net on a generic texture domain disjoint from the task categories.

Run ``python -m reference_impls.continual_ad.pretrain`` from the repository root (CPU, about 10
minutes on one core). It trains :func:`~reference_impls.continual_ad.diffusion.build_unet` with
the DDPM loss on 2,000 :func:`~reference_impls.continual_ad.procad.pretrain_textures` at 32 px,
half of the batches downsampled to 16 px so the backbone serves both sizes, and writes
``reference_impls/continual_ad/checkpoints/procad_unet/`` (config + safetensors, about 3 MB).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from reference_impls.continual_ad.diffusion import CHECKPOINT, build_unet, denoising_loss, make_schedule
from reference_impls.continual_ad.procad import pretrain_textures

__all__ = ["pretrain"]


def pretrain(
    *,
    steps: int = 1200,
    batch: int = 32,
    lr: float = 2e-3,
    n_images: int = 2000,
    seed: int = 0,
    out: str | None = None,
    log_every: int = 100,
) -> None:
    """Train and save the backbone (see module docstring)."""
    torch.manual_seed(seed)
    data = pretrain_textures(n_images, 32, seed=seed)  # (N, 3, 32, 32)
    unet, schedule = build_unet(32), make_schedule()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = 50
    lr_at = lambda s: lr * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    g = torch.Generator().manual_seed(seed + 1)
    start, running = time.time(), 0.0
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        x = data[torch.randint(0, n_images, (batch,), generator=g)]
        if torch.rand(1, generator=g) < 0.5:
            x = F.avg_pool2d(x, 2)  # 16 px
        if torch.rand(1, generator=g) < 0.5:
            x = x.flip(-1)
        loss = denoising_loss(unet, x, schedule, generator=g)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {running / log_every:.4f} ({time.time() - start:.0f} s)", flush=True)
            running = 0.0
    unet.save_pretrained(out or str(CHECKPOINT))
    print(f"saved {out or CHECKPOINT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pretrain(steps=args.steps, out=args.out)
