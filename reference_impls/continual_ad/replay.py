"""Replay: sequential LoRA that rehearses a few stored normal images of every past category.

A small buffer keeps ``per_category`` normal training images of each learned category; while a
new task trains, every batch is half new-task images and half buffer images, so the shared
LoRA keeps modelling old normality. It stores images, which HF-OLB avoids.

Paper: arXiv 2606.02042 (replay is a comparison point; this baseline is ours, see
``reference_impls/continual_ad/hfolb/README.md`` section 7; CDAD-style continual diffusion AD also
compares against it).
Upstream: none public (a standard experience-replay baseline of ours; no reference code to match).

Examples:
    >>> from reference_impls.continual_ad.replay import Replay
    >>> Replay(per_category=8).per_category
    8

Deviations / guesses: the buffer images are the first ``per_category`` of a seeded
permutation; the 1:1 mix holds from the second task on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.continual_ad.naive_lora import NaiveLoRA
from reference_impls.registry import register

__all__ = ["Replay"]


@register("replay", family="continual-replay", kind="continual-ad")
@dataclass
class Replay(NaiveLoRA):
    """:class:`NaiveLoRA` plus a buffer of ``per_category`` images per past category, mixed 1:1."""

    per_category: int = 8

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> None:
        super().begin(unet, schedule, seed)
        self.buffer: list[torch.Tensor] = []  # (per_category, 3, H, W) per past category

    def _sampler(self, images: torch.Tensor):
        if not self.buffer:
            return super()._sampler(images)
        half, buffer = self.train.batch // 2, torch.cat(self.buffer)

        def sample(g: torch.Generator) -> torch.Tensor:
            new = images[torch.randint(0, images.shape[0], (self.train.batch - half,), generator=g)]
            old = buffer[torch.randint(0, buffer.shape[0], (half,), generator=g)]
            return torch.cat([new, old])

        return sample

    def _after_task(self, data: dict[str, torch.Tensor]) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.buffer += [imgs[torch.randperm(imgs.shape[0], generator=g)[: self.per_category]] for imgs in data.values()]
