"""Joint training: one LoRA trained once on every category together (the multi-class upper bound).

Not a continual method: it sees all tasks' normal images at once, so there is nothing to
forget. It bounds what a single shared LoRA of the same size can reach; the protocol evaluates
it once, after training, and reports no forgetting measure.

Paper: arXiv 2606.02042 (joint training as the upper bound; this baseline is ours, see
``reference_impls/continual_ad/hfolb/README.md`` section 7).
Upstream: none public (joint training on all categories, a baseline of ours; no reference code to match).

Examples:
    >>> from reference_impls.continual_ad.joint import JointLoRA
    >>> JointLoRA.offline
    True

Deviations / guesses: the same number of steps per task as the continual methods, times the
number of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.continual_ad.learner import TrainConfig
from reference_impls.continual_ad.naive_lora import NaiveLoRA
from reference_impls.registry import register

__all__ = ["JointLoRA"]


@register("joint-lora", family="parameter-isolation", kind="continual-ad")
@dataclass
class JointLoRA(NaiveLoRA):
    """:class:`NaiveLoRA` trained once on the union of all tasks (``n_tasks`` x the per-task steps)."""

    offline = True
    n_tasks: int = 1

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        per_task, self.train = self.train, TrainConfig(self.train.steps * self.n_tasks, self.train.batch, self.train.lr)
        try:
            return super().learn_task(task, data)
        finally:
            self.train = per_task
