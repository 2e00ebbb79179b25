"""HF-OLB + HNABG: orthogonal LoRA banks on a frozen diffusion U-Net, grown only where normality is novel.

Reference implementation of the described method. Each task gets a new LoRA bank (a named
peft adapter) while the pretrained U-Net and all earlier banks stay frozen. The new bank lives
in the orthogonal complement of the historical subspaces: its down-projection is
``A = Ã (I − U Uᵀ)``, where ``U`` spans past layer inputs (GPM energy rule) and past ``A``
rows, and its up-projection is ``B = (I − V Vᵀ) B̃`` with ``V`` spanning past ``B`` columns.
The projections are parametrisations, so they hold exactly under AdamW. HNABG measures per
layer how much of the new task's input energy lies outside ``U`` (the residual normality
novelty ν), grows only the layers where ν exceeds what the subspace was allowed to ignore,
gives them a rank that covers 90 % of the residual energy (capped per U-Net level, optionally
within a parameter budget), and adds no bank at all when no layer is novel. At test time a
router picks the task, and the bank prefix up to that task reproduces the post-task model.

Paper: arXiv 2606.02042 ("Normality-Preserving Continual Industrial Anomaly Detection via
Orthogonal LoRA Banks"; only the abstract is available to us).

Upstream: none public. The full design, what the abstract says and every choice we made with
its reason and provenance, is in this package's ``README.md``.

Layout: :class:`HFOLB` (this module) is the registered configuration and holds configuration
only; :meth:`HFOLB.begin` returns an :class:`~reference_impls.continual_ad.hfolb.run.HFOLBRun`,
the run state (banks, subspaces, router, logs) and the algorithm. Banks, subspace arithmetic
and routing are the shared modules :mod:`~reference_impls.continual_ad.banks`,
:mod:`~reference_impls.continual_ad.subspace` and :mod:`~reference_impls.continual_ad.routing`.

Examples:
    >>> from reference_impls.continual_ad.hfolb import HFOLB
    >>> from reference_impls.continual_ad.learner import TrainConfig
    >>> method = HFOLB(train=TrainConfig(steps=5, batch=4))  # then run_continual(method, ...)
    >>> method.routing, method.r_max_coarse, method.r_max
    ('prototype_prefix', 8, 4)

Deviations / guesses (all of the algorithm is reconstruction; the abstract gives only the
ideas; README section 4): which layers are adapted; "historical LoRA subspaces" read as
activations ∪ A rows (``mode="both"``; "activation", "param" and "none" are ablations);
ν = tr(PCP)/tr(C) with the growth threshold (1 − ε_{t−1}) + 0.02; ranks from the 90 % residual
energy rule with caps 8 (coarsest level) / 4; prototype routing of prefixes (``routing``:
"prototype_prefix", "reconstruction_prefix", "sum_all", or "oracle" for the FM guarantee check);
a task that grows nothing reuses the prefix of its nearest prototype's task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from reference_impls.continual_ad.learner import ContinualMethod, TrainConfig
from reference_impls.registry import register

from .run import HFOLBRun

__all__ = ["HFOLB", "HFOLBRun"]


@register("hf-olb", family="parameter-isolation", kind="continual-ad")
@dataclass
class HFOLB(ContinualMethod):
    """HF-OLB + HNABG configuration (configuration only; :meth:`begin` returns the run state).

    Defaults are the CPU reference values of README section 9; every one is our choice (the
    abstract gives no hyper-parameter), and the README says where each comes from.
    """

    # ---- subspaces and growth (README §4.3-4.4) -------------------------------------------------
    mode: Literal["both", "activation", "param", "none"] = "both"
    """Historical subspace: "both" (activations ∪ A rows, plus V), "activation", "param", "none"."""
    hnabg: bool = True
    """False: no novelty test, every layer grows with ``fixed_rank`` every task."""
    fixed_rank: int = 4
    """Rank of every layer when ``hnabg=False`` (capped by the numerical rank of the residual covariance)."""
    r_max_coarse: int = 8
    """Rank cap at the coarsest U-Net level (the lowest-resolution down/up blocks and the mid block)."""
    r_max: int = 4
    """Rank cap at every other level."""
    r_min: int = 1
    """Smallest rank of a growing layer; a layer whose ``U`` has more than ``d_in − r_min`` columns is saturated."""
    tau_rank: float = 0.9
    """Needed rank ρ: the fewest residual eigen-directions holding this share of the residual energy."""
    margin: float = 0.02
    """Growth threshold δ_t = (1 − ε_{t−1}) + margin: a layer grows when ν exceeds it."""
    beta_r: float = 1.0
    """Rank multiplier: r = clip(ceil(beta_r · ρ), r_min, cap)."""
    budget: int | None = None
    """Per-task parameter budget Π = Σ r (d_in + d_out); None: no budget."""
    eps_override: float | None = None
    """Fixed GPM ε for every task (tests use 1.0 to keep the whole input space);
    None: ε_t = min(0.97 + 0.003 t, 0.995)."""
    functional_check: bool = False
    """Grow only if the current model's denoising loss on the task exceeds the mean final loss of past
    tasks by more than a factor 1 + gamma."""
    gamma: float = 0.1
    """Tolerance of the functional check (only read when ``functional_check``)."""
    # ---- training (README §4.3 steps 5-7) -------------------------------------------------------
    train_A: bool = True
    """Whether the down-projection Ã trains (False: InfLoRA behaviour, A fixed at its initialisation)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Per-task training: AdamW (weight decay 0) steps, batch size and learning rate of the new bank."""
    # ---- input statistics (README §4.3 step 1) ---------------------------------------------------
    n_tau: int = 4
    """Noise levels drawn per image when collecting layer-input covariances."""
    positions: int = 256
    """Random unfold positions per image for conv-layer inputs."""
    stat_images: int | None = None
    """Use at most this many training images per task for statistics (None: all)."""
    stat_timesteps: Literal["inference", "train"] = "inference"
    """Statistics timesteps from {1..t0} ("inference", the range the scorer uses) or {1..T} ("train")."""
    t0_frac: float = 0.3
    """t0 = t0_frac · T, the upper end of the "inference" timestep range (match the scorer's t0)."""
    # ---- routing (README §4.6) -------------------------------------------------------------------
    routing: Literal["prototype_prefix", "reconstruction_prefix", "sum_all", "oracle"] = "prototype_prefix"
    """Test-time bank selection: R1 prototype prefix, R2 reconstruction prefix, R0 all banks, or the true task."""
    tau_p_frac: float = 0.1
    """Routing features are taken at τ_p = tau_p_frac · T with fixed noise."""
    k_prototypes: int = 3
    """k-means prototypes per category."""

    def begin(self, unet: torch.nn.Module, schedule, seed: int) -> HFOLBRun:
        """Start a run on the frozen ``unet``: the returned run state learns and scores."""
        return HFOLBRun(self, unet, schedule, seed)
