"""The state of one HF-OLB run and the algorithm that changes it: statistics, growth, training, consolidation, routing.

:class:`HFOLBRun` is what :meth:`HFOLB.begin <reference_impls.continual_ad.hfolb.HFOLB.begin>`
returns: it owns the LoRA banks on the frozen U-Net, the per-layer history bases ``U`` and
``V``, the saturated layers, the bank prefix of every task, the prototype router and the task
logs. The :class:`~reference_impls.continual_ad.hfolb.HFOLB` configuration it reads stays
configuration only, so one configuration can start any number of runs. Section numbers refer to
``reference_impls/continual_ad/hfolb/README.md``.

Examples:
    >>> from reference_impls.continual_ad.diffusion import build_unet, make_schedule
    >>> from reference_impls.continual_ad.hfolb import HFOLB
    >>> run = HFOLB().begin(build_unet(16, channels=(8, 16)), make_schedule(), seed=0)
    >>> run.prefixes, run.U["mid_block.resnets.0.conv1"].shape
    ([], torch.Size([144, 0]))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from reference_impls.continual_ad.banks import LoRABanks, input_covariances
from reference_impls.continual_ad.diffusion import denoising_loss
from reference_impls.continual_ad.learner import batches, final_loss, train_denoiser
from reference_impls.continual_ad.routing import PrototypeRouter, reconstruction_route, routing_features
from reference_impls.continual_ad.subspace import (
    allocate_ranks,
    complement,
    extend_basis,
    gpm_epsilon,
    gpm_extend,
    novelty,
    residual_share,
)

if TYPE_CHECKING:
    from . import HFOLB

__all__ = ["HFOLBRun"]


class HFOLBRun:
    """One continual run of HF-OLB + HNABG: ``learn_task`` task by task, ``score`` at any time.

    Attributes:
        config: the configuration, read at every call (evaluation variants may change
            ``config.routing`` between calls).
        banks: the LoRA banks (named peft adapters) on the frozen U-Net; ``banks.model`` is the ε-predictor.
        schedule: the DDPM schedule.
        seed: the run seed (statistics, training batches, routing prototypes).
        U: per layer, the orthonormal basis (d_in, k_l) of the stored input subspace (§4.2).
        V: per layer, the orthonormal basis (d_out, m_l) of the old banks' B columns.
        saturated: layers whose ``U`` left fewer than ``r_min`` free directions; they never grow again.
        prefixes: per task (0-based), the bank names active in the post-task model.
        router: prototype router over frozen-base features (§4.6, R1).
        final_losses: the final training loss of every task that grew (functional check, §4.4).
        history: the log of every task (per-layer ν, ρ, rank, growth; parameters added).
    """

    def __init__(self, config: HFOLB, unet: torch.nn.Module, schedule, seed: int):
        self.config = config
        self.banks, self.schedule, self.seed = LoRABanks(unet), schedule, seed
        self.U = {n: torch.zeros(s.d_in, 0) for n, s in self.banks.layers.items()}  # (d_in, k_l)
        self.V = {n: torch.zeros(s.d_out, 0) for n, s in self.banks.layers.items()}  # (d_out, m_l)
        self.saturated: set[str] = set()
        self.prefixes: list[list[str]] = []  # task -> bank names active for it
        self.router = PrototypeRouter(config.k_prototypes, seed)
        self.final_losses: list[float] = []
        self.history: list[dict] = []

    def _eps(self, task_number: int) -> float:
        eps = self.config.eps_override
        return eps if eps is not None else gpm_epsilon(task_number)

    def _stats(self, images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """Per-layer input covariances of the current model on noised ``images`` (§4.3 step 1)."""
        config = self.config
        if config.stat_images is not None:
            images = images[: config.stat_images]
        T = self.schedule.config.num_train_timesteps
        t_max = T if config.stat_timesteps == "train" else int(round(config.t0_frac * T))
        return input_covariances(
            self.banks.model,
            self.banks.layers,
            images,
            self.schedule,
            t_max=t_max,
            n_tau=config.n_tau,
            positions=config.positions,
            seed=seed,
        )

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        with self.banks.base() as base:
            return routing_features(base, images, self.schedule, tau_frac=self.config.tau_p_frac)

    # ---- one task ------------------------------------------------------------------------------
    def learn_task(self, task: int, data: dict[str, torch.Tensor]) -> dict:
        """Novelty, growth test, rank allocation, training and consolidation of task ``task`` (0-based), §4.3-4.4."""
        config = self.config
        n = task + 1  # 1-based task number of the README's formulas
        images = torch.cat(list(data.values()))
        layers = self.banks.layers
        self.banks.activate(list(self.banks.owner))  # the current model: every bank so far
        use_U = config.mode != "none"
        C = self._stats(images, seed=self.seed * 1000 + n)
        history = {l: self.U[l] if use_U else self.U[l][:, :0] for l in layers}
        nu = {l: residual_share(C[l], history[l]) for l in layers}  # cheap: traces only
        delta = (1 - self._eps(n - 1)) + config.margin if n > 1 else -1.0
        candidates = [l for l in layers if l not in self.saturated and (nu[l] > delta or not config.hnabg)]
        stats = {l: novelty(C[l], history[l], config.tau_rank) for l in candidates}  # spectra where growth is possible
        if config.hnabg:
            growing = list(candidates)
            if growing and config.functional_check and self.final_losses:
                ratio = self._loss(images) / (sum(self.final_losses) / len(self.final_losses))
                growing = growing if ratio > 1 + config.gamma else []
            caps = {l: config.r_max_coarse if layers[l].coarsest else config.r_max for l in layers}
            sizes = {l: (layers[l].d_in, layers[l].d_out) for l in layers}
            ranks = allocate_ranks(
                stats, growing, caps, sizes, beta_r=config.beta_r, r_min=config.r_min, budget=config.budget
            )
        else:
            ranks = {l: min(config.fixed_rank, stats[l].rank) for l in candidates if stats[l].rank > 0}
        log = {
            "task": n,
            "layers": {
                l: {"nu": nu[l], "rho": stats[l].rho if l in stats else 0, "r": ranks.get(l, 0), "grew": l in ranks}
                for l in layers
            },
        }
        name = f"task{n}"
        if ranks:
            init_A = {l: stats[l].directions[:, : ranks[l]].T.float() / math.sqrt(3) for l in ranks}
            P_in = {l: complement(self.U[l]) for l in ranks if self.U[l].shape[1] > 0}
            P_out = {l: complement(self.V[l]) for l in ranks if self.V[l].shape[1] > 0}
            params = self.banks.add(name, ranks, owner=n, init_A=init_A, P_in=P_in, P_out=P_out, train_A=config.train_A)
            losses = train_denoiser(
                self.banks.model,
                params,
                batches(images, config.train.batch),
                self.schedule,
                config.train,
                seed=self.seed * 1000 + n,
            )
            self.banks.freeze(name)
            self.prefixes.append(list(self.banks.owner))
            log["final_loss"] = final_loss(losses)
            self.final_losses.append(log["final_loss"])
            log["params_added"] = self.banks.n_params(name)
        else:  # expressible by existing banks: reuse the prefix of the nearest prototype's task
            nearest = self.router.route(self._features(images)).mode().values.item()
            self.prefixes.append(list(self.prefixes[nearest]))
            log["params_added"], log["reused_task"] = 0, nearest + 1
        self.banks.activate(list(self.banks.owner))
        self._consolidate(name if ranks else None, images, n)
        for category, imgs in data.items():
            self.router.add(category, task, self._features(imgs))
        self.history.append(log)
        return log

    def _loss(self, images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(
                denoising_loss(
                    self.banks.model, images, self.schedule, generator=torch.Generator().manual_seed(self.seed)
                )
            )

    def _consolidate(self, name: str | None, images: torch.Tensor, n: int) -> None:
        """Grow U (GPM rule on post-task inputs, plus A rows) and V (B columns); flag saturated layers (§4.3 step 8)."""
        mode = self.config.mode
        if mode == "none":
            return
        C = self._stats(images, seed=self.seed * 1000 + 500 + n) if mode in ("activation", "both") else None
        for l, spec in self.banks.layers.items():
            U = self.U[l]
            if C is not None:
                U, _ = gpm_extend(U, C[l], self._eps(n))
            if name is not None and l in self.banks.ranks[name] and mode in ("param", "both"):
                A, B = self.banks.factors(name, l)
                U = extend_basis(U, A.detach().T)
                self.V[l] = extend_basis(self.V[l], B.detach())
            self.U[l] = U
            if U.shape[1] > spec.d_in - self.config.r_min:
                self.saturated.add(l)

    # ---- inference -----------------------------------------------------------------------------
    def activate_prefix(self, task: int) -> None:
        """Activate the banks of the post-task-``task`` model (0-based)."""
        self.banks.activate(self.prefixes[task])

    def route(self, images: torch.Tensor, task_hint: int | None = None) -> torch.Tensor | None:
        """Task id per image under ``config.routing`` (None for "sum_all"), §4.6."""
        routing = self.config.routing
        if routing == "sum_all":
            return None
        if routing == "oracle":
            return torch.full((images.shape[0],), task_hint)
        if routing == "prototype_prefix":
            return self.router.route(self._features(images))
        if routing == "reconstruction_prefix":
            return reconstruction_route(
                self.banks.model, self.activate_prefix, len(self.prefixes), images, self.schedule
            )
        raise ValueError(f"unknown routing {routing!r}")

    def score(self, images: torch.Tensor, scorer, task_hint: int | None = None):
        """(maps (N, H, W), image scores (N,), routed task ids (N,) or None): each routed group under its prefix."""
        routed = self.route(images, task_hint)
        groups = (
            [(None, torch.arange(images.shape[0]))]
            if routed is None
            else [(int(j), torch.nonzero(routed == j)[:, 0]) for j in routed.unique()]
        )
        maps = torch.zeros(images.shape[0], *images.shape[-2:])
        scores = torch.zeros(images.shape[0])
        for j, index in groups:
            self.banks.activate(list(self.banks.owner) if j is None else self.prefixes[j])
            maps[index], scores[index] = scorer(self.banks.model, images[index], self.schedule, base=self.banks.base)
        self.banks.activate(list(self.banks.owner))
        return maps, scores, routed
