"""Per-task LoRA with an oracle task id: the parameter-isolation upper bound.

Every task trains its own rank-8 LoRA bank from the frozen U-Net, and at test time the true
task id selects that bank alone. Nothing is shared, so nothing is forgotten, but the task id
is not available in a task-agnostic deployment. The class also carries the options O-LoRA
needs (earlier banks stacked and frozen, a penalty on the new bank), see
:mod:`~reference_impls.continual_ad.olora`.

Paper: arXiv 2606.02042 (isolation upper bound; this baseline is ours, see
``reference_impls/continual_ad/hfolb/README.md`` section 7).
Upstream: none public (a baseline of ours; no reference code to match).

Examples:
    >>> from reference_impls.continual_ad.oracle_lora import OracleLoRA
    >>> OracleLoRA().rank
    8

Deviations / guesses: peft's default LoRA initialisation per bank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.continual_ad.banks import LoRABanks
from reference_impls.continual_ad.learner import ContinualMethod, TrainConfig, batches, final_loss, train_denoiser
from reference_impls.registry import register

__all__ = ["OracleLoRA"]


@register("oracle-lora", family="parameter-isolation", kind="continual-ad")
@dataclass
class OracleLoRA(ContinualMethod):
    """One rank-``rank`` bank per task; scoring activates the true task's bank only."""

    rank: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)
    stack_old: bool = False
    """Train and score with every earlier (frozen) bank active too (O-LoRA)."""

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> None:
        self.banks, self.schedule, self.seed = LoRABanks(unet), schedule, seed

    def _penalty(self, name: str):
        return None

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        name = f"task{task + 1}"
        params = self.banks.add(name, {l: self.rank for l in self.banks.layers}, owner=task + 1)
        self.banks.activate(list(self.banks.owner) if self.stack_old else [name])
        images = torch.cat(list(data.values()))
        losses = train_denoiser(
            self.banks.model,
            params,
            batches(images, self.train.batch),
            self.schedule,
            self.train,
            seed=self.seed * 1000 + task + 1,
            penalty=self._penalty(name),
        )
        self.banks.freeze(name)
        return {"task": task + 1, "params_added": self.banks.n_params(name), "final_loss": final_loss(losses)}

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        self.banks.activate(list(self.banks.owner) if self.stack_old else [f"task{task_hint + 1}"])
        maps, scores = scorer(self.banks.model, images, self.schedule, base=self.banks.base)
        return maps, scores, None if self.stack_old else torch.full((images.shape[0],), task_hint)
