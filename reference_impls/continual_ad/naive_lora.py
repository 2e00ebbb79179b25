"""Naive sequential LoRA: one LoRA adapter trained on every task in turn, never frozen.

The lower bound of continual anomaly detection with a frozen diffusion U-Net: a single rank-8
LoRA on every adapted layer is fine-tuned on task 1, then task 2, and so on, with no protection
of what earlier tasks needed, so reconstructions drift towards the latest categories and old
categories' defects and normal textures are no longer told apart (catastrophic forgetting).
It is also the base class of :mod:`~reference_impls.continual_ad.replay` and
:mod:`~reference_impls.continual_ad.joint`.

Paper: arXiv 2606.02042 (compares against sequential fine-tuning; this baseline is ours,
``reference_impls/continual_ad/hfolb/README.md`` section 7).
Upstream: none public (sequential fine-tuning of one LoRA, a baseline of ours; no reference code to match).

Examples:
    >>> from reference_impls.continual_ad.naive_lora import NaiveLoRA
    >>> from reference_impls.continual_ad.learner import TrainConfig
    >>> method = NaiveLoRA(train=TrainConfig(steps=5, batch=4))

Deviations / guesses: peft's default LoRA initialisation (Kaiming A, zero B); a fresh AdamW
(weight decay 0) per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.continual_ad.banks import LoRABanks
from reference_impls.continual_ad.learner import ContinualMethod, TrainConfig, batches, final_loss, train_denoiser
from reference_impls.registry import register

__all__ = ["NaiveLoRA"]


@register("naive-lora", family="parameter-isolation", kind="continual-ad")
@dataclass
class NaiveLoRA(ContinualMethod):
    """One rank-``rank`` LoRA on every adapted layer, trained across tasks."""

    rank: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> None:
        self.banks, self.schedule, self.seed = LoRABanks(unet), schedule, seed
        self.params: list[torch.nn.Parameter] = []

    def _sampler(self, images: torch.Tensor):
        """Batches for the current task (replay overrides this)."""
        return batches(images, self.train.batch)

    def _after_task(self, data: dict[str, torch.Tensor]) -> None:
        """Hook after training a task (replay fills its buffer here)."""

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        added = 0
        if not self.params:
            self.params = self.banks.add("shared", {l: self.rank for l in self.banks.layers}, owner=1)
            added = self.banks.n_params("shared")
        images = torch.cat(list(data.values()))
        losses = train_denoiser(
            self.banks.model,
            self.params,
            self._sampler(images),
            self.schedule,
            self.train,
            seed=self.seed * 1000 + task + 1,
        )
        self._after_task(data)
        return {"task": task + 1, "params_added": added, "final_loss": final_loss(losses)}

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        maps, scores = scorer(self.banks.model, images, self.schedule, base=self.banks.base)
        return maps, scores, None
