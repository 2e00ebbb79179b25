"""GPM-style gradient projection: full-weight fine-tuning whose gradients avoid past input subspaces.

Gradient Projection Memory keeps, per layer, an orthonormal basis ``U`` of the inputs that
past tasks fed the layer, grown after every task with GPM's energy rule (:func:`gpm_update`).
While a new task trains, each weight gradient ``G`` (d_out, d_in) is replaced by
``G (I − U Uᵀ)``, so the update leaves past inputs' outputs almost unchanged. It trains the
adapted layers' full weights instead of a LoRA, and needs no routing.

Paper: arXiv 2103.09762 (GPM, ICLR 2021); the continual diffusion AD setting follows arXiv
2502.19848 (One-for-More: Continual Diffusion Model for Anomaly Detection) in spirit.
Upstream: sahagobinda/GPM main_cifar100.py (``update_GPM``, the ``threshold`` line of ``main``)
@ dc5ba5cad92de980428045e0b926b9609badc8c4.

Examples:
    >>> from reference_impls.continual_ad.gpm_projection import GPMProjection, gpm_threshold
    >>> GPMProjection().optimizer
    'sgd'
    >>> [round(gpm_threshold(task), 3) for task in (0, 1, 9)]  # 0-based task index
    [0.97, 0.973, 0.997]

Faithful to upstream (:func:`gpm_update`, :func:`gpm_threshold`): the threshold
``0.97 + 0.003 · task`` with a 0-based task index (upstream's CIFAR-100 setting); after the
first task, the top ``r`` singular directions with ``r`` = the number of components whose
cumulative energy share is still *below* the threshold (upstream's Eq. 5 line, which keeps one
component fewer than "the fewest that reach it"); after later tasks, the fewest residual
directions that bring the captured share to the threshold (Eq. 9); eigen-decomposing the
covariance ``R Rᵀ`` gives the same directions and energies as upstream's SVD of the
representation matrix ``R``.

Deviations / guesses: only the weights of the HF-OLB adapted layers train (biases and the rest
stay frozen; upstream trains every parameter and zeroes the bias gradients after task 1); SGD
with momentum 0.9 (upstream builds ``optim.SGD`` without momentum; momentum sums projected
gradients, so the projection stays exact); ``params_added`` counts the dense weights it must
store per run to keep the pretrained U-Net intact (reported once, at task 1); the bases use the
same statistics as HF-OLB (inputs at the inference timesteps) instead of 125 training samples.
``threshold="hfolb"`` (off by default) uses HF-OLB's rule instead: ``min(0.97 + 0.003 t, 0.995)``
with a 1-based ``t`` and "the fewest that reach it" after every task
(:func:`~reference_impls.continual_ad.subspace.gpm_extend`), what this module did before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.continual_ad.banks import adapted_layers, input_covariances
from reference_impls.continual_ad.learner import ContinualMethod, TrainConfig, batches, final_loss, train_denoiser
from reference_impls.continual_ad.subspace import Moments, gpm_epsilon, gpm_extend
from reference_impls.registry import register

__all__ = ["GPMProjection", "project_gradient", "gpm_threshold", "gpm_update"]


def gpm_threshold(task: int) -> float:
    """Upstream's energy threshold after task ``task`` (0-based): ``0.97 + 0.003 · task``."""
    return 0.97 + 0.003 * task


def gpm_update(U: torch.Tensor, C, threshold: float, first: bool) -> tuple[torch.Tensor, int]:
    """Upstream ``update_GPM`` for one layer: the basis grown from covariance ``C`` (d, d) or :class:`Moments`.

    Args:
        U: orthonormal basis (d, k) of earlier tasks (k = 0 before the first task).
        C: the layer's input second moments on the task just learned.
        threshold: energy threshold (:func:`gpm_threshold`).
        first: whether this is the first task (upstream's ``not feature_list`` branch).

    Returns:
        (new basis (d, k + r), r).
    """
    if not first:
        return gpm_extend(U, C, threshold)  # Eq. 9: fewest residual directions reaching the threshold
    C = C if isinstance(C, Moments) else Moments(cov=C)
    values, vectors = C.residual_spectrum(U)  # U has no columns: the spectrum of C, descending
    r = int((torch.cumsum(values, 0) / C.trace() < threshold).sum())  # Eq. 5: strictly below
    return vectors[:, :r].to(U.dtype), r


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
    threshold: str = "upstream"
    """Basis growth rule: ``"upstream"`` (GPM's code) or ``"hfolb"`` (HF-OLB's, see Deviations)."""

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

        losses = train_denoiser(
            self.unet,
            weights,
            batches(images, self.train.batch),
            self.schedule,
            self.train,
            seed=self.seed * 1000 + task + 1,
            optimizer=self.optimizer,
            transform_grads=transform,
        )
        for w in weights:
            w.requires_grad_(False)
        stats = images if self.stat_images is None else images[: self.stat_images]
        C = input_covariances(
            self.unet,
            self.layers,
            stats,
            self.schedule,
            t_max=int(round(self.t0_frac * self.schedule.config.num_train_timesteps)),
            n_tau=self.n_tau,
            positions=self.positions,
            seed=self.seed * 1000 + 500 + task,
        )
        for name in self.layers:
            if self.threshold == "upstream":
                self.U[name], _ = gpm_update(self.U[name], C[name], gpm_threshold(task), first=task == 0)
            elif self.threshold == "hfolb":
                self.U[name], _ = gpm_extend(self.U[name], C[name], gpm_epsilon(task + 1))
            else:
                raise ValueError(f"unknown threshold rule {self.threshold!r}")
        added = sum(w.numel() for w in weights) if task == 0 else 0
        return {
            "task": task + 1,
            "params_added": added,
            "final_loss": final_loss(losses),
            "basis_dims": sum(u.shape[1] for u in self.U.values()),
        }

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        maps, scores = scorer(self.unet, images, self.schedule)
        return maps, scores, None
