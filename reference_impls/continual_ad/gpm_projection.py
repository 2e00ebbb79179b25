"""GPM-style gradient projection: full-weight fine-tuning whose gradients avoid past input subspaces.

Gradient Projection Memory keeps, per layer, an orthonormal basis ``U`` of the inputs that
past tasks fed the layer (grown with the energy rule of
:func:`~reference_impls.continual_ad.subspace.gpm_extend`). While a new task trains, each
weight gradient ``G`` (d_out, d_in) is replaced by ``G (I − U Uᵀ)``, so with plain SGD (momentum
is a sum of projected gradients) the update leaves past inputs' outputs almost unchanged. It
trains the adapted layers' full weights instead of a LoRA, and needs no routing.

Paper: arXiv 2103.09762 (GPM, ICLR 2021), as described in the HF-OLB design note section 4.1;
the continual diffusion AD setting follows arXiv 2502.19848 (One-for-More: Continual Diffusion
Model for Anomaly Detection) in spirit.

Examples:
    >>> from reference_impls.continual_ad.gpm_projection import GPMProjection
    >>> GPMProjection().optimizer
    'sgd'

Deviations / guesses: only the weights of the HF-OLB adapted layers train (biases and the rest
stay frozen); SGD with momentum 0.9; ``params_added`` counts the dense weights it must store
per run to keep the pretrained U-Net intact (reported once, at task 1); the bases use the same
statistics as HF-OLB (inputs at the inference timesteps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.continual_ad.banks import adapted_layers, input_covariances
from reference_impls.continual_ad.learner import ContinualMethod, TrainConfig, batches, final_loss, train_denoiser
from reference_impls.continual_ad.subspace import gpm_epsilon, gpm_extend
from reference_impls.registry import register

__all__ = ["GPMProjection", "project_gradient"]


def project_gradient(grad: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``G − (G U) Uᵀ`` on the weight's (d_out, d_in) view (conv weights flattened like ``F.unfold``)."""
    G = grad.reshape(grad.shape[0], -1)
    return (G - (G @ U) @ U.T).reshape(grad.shape)


@register("gpm-projection", family="continual-regularization", kind="continual-ad")
@dataclass
class GPMProjection(ContinualMethod):
    """Full-weight training of the adapted layers with GPM gradient projection."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.02))
    optimizer: str = "sgd"
    n_tau: int = 4
    positions: int = 256
    stat_images: int | None = None
    t0_frac: float = 0.3

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> None:
        self.unet, self.schedule, self.seed = unet.requires_grad_(False), schedule, seed
        self.layers = adapted_layers(unet)
        self.U = {n: torch.zeros(s.d_in, 0) for n, s in self.layers.items()}

    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        images = torch.cat(list(data.values()))
        weights = [spec.module.weight for spec in self.layers.values()]
        for w in weights:
            w.requires_grad_(True)

        def transform() -> None:
            for name, spec in self.layers.items():
                if self.U[name].shape[1] and spec.module.weight.grad is not None:
                    spec.module.weight.grad.copy_(project_gradient(spec.module.weight.grad, self.U[name]))

        losses = train_denoiser(self.unet, weights, batches(images, self.train.batch), self.schedule, self.train,
                                seed=self.seed * 1000 + task + 1, optimizer=self.optimizer, transform_grads=transform)
        for w in weights:
            w.requires_grad_(False)
        stats = images if self.stat_images is None else images[: self.stat_images]
        C = input_covariances(self.unet, self.layers, stats, self.schedule,
                              t_max=int(round(self.t0_frac * self.schedule.config.num_train_timesteps)),
                              n_tau=self.n_tau, positions=self.positions, seed=self.seed * 1000 + 500 + task)
        for name in self.layers:
            self.U[name], _ = gpm_extend(self.U[name], C[name], gpm_epsilon(task + 1))
        added = sum(w.numel() for w in weights) if task == 0 else 0
        return {"task": task + 1, "params_added": added, "final_loss": final_loss(losses),
                "basis_dims": sum(u.shape[1] for u in self.U.values())}

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        maps, scores = scorer(self.unet, images, self.schedule)
        return maps, scores, None
