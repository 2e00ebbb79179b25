"""The continual protocol shared by every method: train task by task, evaluate all seen categories after each.

A method is a :class:`ContinualMethod`: ``begin`` receives the frozen U-Net and returns the
:class:`Learner` of the run, ``learn_task`` gets the normal training images of one task, and
``score`` returns anomaly maps for test images (the method routes them itself; ``task_hint`` is
the true task, which only oracle methods may use). A method whose configuration must stay
configuration only (HF-OLB) returns a separate run-state object from ``begin``; the baselines
keep their few state fields on themselves, return None, and are their own learner.
:func:`train_denoiser` is the one training loop (AdamW with weight decay 0 or SGD, optional
penalty, optional gradient transform) and :func:`run_continual` the one evaluation protocol,
producing the accuracy matrices that :func:`~reference_impls.continual_ad.metrics.continual_summary`
turns into A-AUROC and FM.

Examples:
    >>> from reference_impls.continual_ad.learner import TrainConfig
    >>> TrainConfig(steps=10).lr
    0.001
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from reference_impls.continual_ad.data import CategoryData, Setting
from reference_impls.continual_ad.diffusion import denoising_loss
from reference_impls.continual_ad.metrics import aupro, auroc, continual_summary, pixel_auroc

__all__ = [
    "TrainConfig",
    "Learner",
    "ContinualMethod",
    "train_denoiser",
    "final_loss",
    "batches",
    "run_continual",
    "ContinualResult",
]


@dataclass
class TrainConfig:
    """Per-task training: ``steps`` optimiser steps of ``batch`` images, learning rate ``lr``."""

    steps: int = 300
    """Optimiser steps per task (a fixed schedule: no model selection)."""
    batch: int = 16
    """Images per step, drawn uniformly from the task's normal training images."""
    lr: float = 1e-3
    """Learning rate (AdamW with weight decay 0, or SGD for gradient projection)."""


class Learner(Protocol):
    """What learns task by task and scores test images during one run."""

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict: ...

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None): ...


class ContinualMethod:
    """Interface of a continual anomaly detection method (subclasses are dataclasses)."""

    offline = False
    """True for joint training: the protocol calls ``learn_task`` once with every category."""

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> Learner | None:
        """Start a run on the frozen ``unet``; return its learner, or None when the method learns itself."""
        raise NotImplementedError

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        """Learn task ``task`` (0-based) from ``{category: normal images}``; return a log with ``params_added``."""
        raise NotImplementedError

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        """(maps (N, H, W), image scores (N,), routed task ids (N,) or None)."""
        raise NotImplementedError


def train_denoiser(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    sample: Callable[[torch.Generator], torch.Tensor],
    schedule,
    config: TrainConfig,
    *,
    seed: int = 0,
    optimizer: str = "adamw",
    penalty: Callable[[], torch.Tensor] | None = None,
    transform_grads: Callable[[], None] | None = None,
) -> list[float]:
    """Train ``params`` (and nothing else) on the DDPM loss of batches from ``sample``.

    Args:
        model: ε-predictor.
        params: the only parameters the optimiser sees.
        sample: returns a batch (B, 3, H, W) given a generator.
        schedule: DDPM schedule.
        config: steps, batch, lr.
        seed: seeds batches, timesteps and noise.
        optimizer: "adamw" (weight decay 0) or "sgd" (momentum 0.9).
        penalty: extra loss term (O-LoRA).
        transform_grads: called after backward, before the step (gradient projection).

    Returns:
        the loss of every step.
    """
    g = torch.Generator().manual_seed(seed)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    losses = []
    model.train()
    for _ in range(config.steps):
        loss = denoising_loss(model, sample(g), schedule, generator=g)
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if transform_grads is not None:
            transform_grads()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def final_loss(losses: list[float], last: int = 20) -> float:
    """Mean loss of the last ``last`` training steps (what every method's task log reports)."""
    tail = losses[-last:]
    return sum(tail) / len(tail)


def batches(images: torch.Tensor, batch: int) -> Callable[[torch.Generator], torch.Tensor]:
    """Sampler of uniformly drawn batches of ``batch`` images (no augmentation)."""
    return lambda g: images[torch.randint(0, images.shape[0], (batch,), generator=g)]


@dataclass
class ContinualResult:
    """Accuracy matrices (T, C) in points (NaN before a category is learned) and per-task logs."""

    categories: list[str]
    task_of: list[int]
    image: np.ndarray
    pixel: np.ndarray
    aupro: np.ndarray
    """(C,) AUPRO in points after the last task."""
    routing_accuracy: float | None
    logs: list[dict] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)
    """Final-task figures of evaluation variants (e.g. other routings of the same trained model)."""
    learner: Learner | None = field(default=None, repr=False, compare=False)
    """The trained learner after the last task (HF-OLB: its run state), for inspection."""

    def summary(self) -> dict:
        image, pixel = continual_summary(self.image, self.task_of), continual_summary(self.pixel, self.task_of)
        return {
            "image_a_auroc": image["a_auroc"],
            "image_fm": image["fm"],
            "pixel_a_auroc": pixel["a_auroc"],
            "pixel_fm": pixel["fm"],
            "aupro": float(np.mean(self.aupro)),
            "image_curve": image["curve"],
            "pixel_curve": pixel["curve"],
            "routing_accuracy": self.routing_accuracy,
            "params_per_task": [log.get("params_added", 0) for log in self.logs],
        }


def run_continual(
    method: ContinualMethod,
    setting: Setting,
    data: dict[str, CategoryData],
    unet: torch.nn.Module,
    schedule,
    scorer,
    *,
    seed: int = 0,
    evaluate_every_task: bool = True,
    final_variants: dict[str, dict] | None = None,
) -> ContinualResult:
    """Train ``method`` over ``setting`` and evaluate every seen category after every task.

    Args:
        method: a method configuration (``begin`` is called here with ``unet``; a baseline that
            keeps state on itself must be fresh).
        setting: the task groups.
        data: categories by name.
        unet: the frozen pretrained U-Net (the method may wrap it; pass a copy per run).
        schedule: DDPM schedule.
        scorer: e.g. :class:`~reference_impls.continual_ad.scorer.DiffusionScorer`.
        seed: run seed.
        evaluate_every_task: False evaluates only after the last task (FM is then NaN).
        final_variants: ``{name: {attribute: value}}`` set on the method for an extra evaluation after
            the last task (image/pixel A-AUROC and routing accuracy per variant); attributes are restored.
            The learner reads them from ``method`` (HF-OLB's run reads its configuration at every call).
    """
    torch.manual_seed(seed)
    cats = list(setting.categories)
    task_of = [setting.task_of(c) for c in cats]
    n_tasks = len(setting.groups)
    image = np.full((n_tasks, len(cats)), np.nan)
    pixel = np.full_like(image, np.nan)
    final_aupro = np.full(len(cats), np.nan)
    routed_right, routed_total = 0, 0
    learner = method.begin(unet, schedule, seed) or method
    logs = []
    steps = (
        [(0, {c: data[c].train for c in cats})]
        if method.offline
        else [(t, {c: data[c].train for c in group}) for t, group in enumerate(setting.groups)]
    )
    for t, task_data in steps:
        logs.append(learner.learn_task(t, task_data))
        last = t == steps[-1][0]
        if not (evaluate_every_task or last):
            continue
        row = n_tasks - 1 if method.offline else t
        for ci, c in enumerate(cats):
            if task_of[ci] > t and not method.offline:
                continue
            d = data[c]
            maps, scores, routed = learner.score(d.test, scorer, task_hint=task_of[ci])
            image[row, ci] = 100 * auroc(scores, d.labels)
            pixel[row, ci] = 100 * pixel_auroc(maps, d.masks)
            if last:
                final_aupro[ci] = 100 * aupro(maps, d.masks)
                if routed is not None:
                    routed_right += int((routed == task_of[ci]).sum())
                    routed_total += routed.numel()
    if method.offline:  # one evaluation only: the matrix is its final row
        image, pixel = image[-1:], pixel[-1:]
        task_of = [0] * len(cats)
    routing = routed_right / routed_total if routed_total else None
    variants = {
        name: _evaluate_variant(method, learner, attrs, cats, setting, data, scorer)
        for name, attrs in (final_variants or {}).items()
    }
    return ContinualResult(cats, task_of, image, pixel, final_aupro, routing, logs, variants, learner)


def _evaluate_variant(method, learner: Learner, attrs: dict, cats, setting, data, scorer) -> dict:
    saved = {k: getattr(method, k) for k in attrs}
    for k, v in attrs.items():
        setattr(method, k, v)
    try:
        image, pixel, right, total = [], [], 0, 0
        for c in cats:
            d, t = data[c], setting.task_of(c)
            maps, scores, routed = learner.score(d.test, scorer, task_hint=t)
            image.append(100 * auroc(scores, d.labels))
            pixel.append(100 * pixel_auroc(maps, d.masks))
            if routed is not None:
                right, total = right + int((routed == t).sum()), total + routed.numel()
        return {
            "image_a_auroc": float(np.mean(image)),
            "pixel_a_auroc": float(np.mean(pixel)),
            "routing_accuracy": right / total if total else None,
        }
    finally:
        for k, v in saved.items():
            setattr(method, k, v)
