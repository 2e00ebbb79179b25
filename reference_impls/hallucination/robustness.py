"""Robustness probes for unlearned models: relearning attack, Gaussian weight noise, worst-case push.

- :func:`relearn`: fine-tune a *copy* on a small set of hallucination data (plain NLL, AdamW,
  the shared :class:`~.trainer.UnlearningTrainer` with one term) and evaluate after each budget
  in ``checkpoints``. Always run it on the original, never-unlearned model with the same budget
  as well: without that reference a relapse curve cannot be read.
- :func:`gaussian_noise`: a copy with per-tensor noise ``W + alpha std(W) N(0, 1)``.
- :func:`worst_case_probe`: the target probability of a forget batch at ``theta + rho u`` with
  ``u`` the normalised gradient that *raises* the hallucination (GA direction), for several
  ``rho``: the sharpness SARE is meant to flatten.

Examples:
    >>> # curve = relearn(model, lambda step: {"relearn": batch}, checkpoints=(5, 10, 30),
    >>> #                 evaluate=lambda m: {"hal": rate(m)})
    >>> # noisy = gaussian_noise(model, alpha=0.1, seed=0)

Upstream: none (evaluation protocols, not a method with reference code); the noise follows the
equation above and ``tests/hallucination/test_parity.py`` checks it.

Deviations / guesses: the protocol of ``reference_impls/hallucination/sare/README.md``, section 7
(Fan et al. 2025 relearn with plain fine-tuning); budgets, learning rate and noise scales are
parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .terms import ga_term, nll_term
from .trainer import ADVERSARIAL_LOSS, SAMConfig, TrainerConfig, UnlearningTrainer

__all__ = ["relearn", "gaussian_noise", "worst_case_probe"]


def relearn(
    model: nn.Module,
    batches: Callable[[int], dict[str, dict]],
    *,
    checkpoints: Sequence[int] = (5, 10, 30),
    lr: float = 5e-4,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    trainable: Callable[[str], bool] | None = None,
) -> list[dict[str, float]]:
    """Relearning attack on a copy of ``model``; ``batches(step)["relearn"]`` is the NLL data.

    ``trainable(name)`` picks the parameters the attack updates (default: every parameter, frozen
    ones included); the others keep their values.

    Returns:
        One row per budget in ``checkpoints``: ``{"steps": n, **evaluate(copy)}`` (the copy is
        evaluated in eval mode after ``n`` cumulative steps).
    """
    attacked = copy.deepcopy(model)
    for name, parameter in attacked.named_parameters():
        parameter.requires_grad_(trainable is None or trainable(name))
    trainer = UnlearningTrainer(attacked, [nll_term("relearn")], TrainerConfig(lr=lr))
    rows = []
    for budget in sorted(checkpoints):
        while trainer.step_count < budget:
            trainer.step(batches(trainer.step_count))
        rows.append({"steps": budget, **(evaluate(attacked) if evaluate else {})})
    return rows


@torch.no_grad()
def gaussian_noise(model: nn.Module, alpha: float, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``W + alpha * std(W) * N(0, 1)`` on every tensor of > 1 element."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for p in noisy.parameters():
        if p.numel() > 1:
            p.add_(alpha * p.float().std() * torch.randn(p.shape, generator=generator).to(p.dtype))
    return noisy


def worst_case_probe(
    model: nn.Module, forget_batch: dict, rhos: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5)
) -> list[dict[str, float]]:
    """Target probability of ``forget_batch`` after a push of norm ``rho`` along the GA gradient.

    Returns:
        ``[{"rho", "p_target", "p_target_pushed", "loss_increase"}]``; the model is unchanged.
    """
    rows = []
    for rho in rhos:
        trainer = UnlearningTrainer(model, [ga_term()], TrainerConfig(lr=0.0, sam=SAMConfig(rho=rho)))
        _, stats = trainer.gradients({"forget": forget_batch})
        model.zero_grad(set_to_none=True)
        rows.append(
            {
                "rho": rho,
                "p_target": stats["clean_p_target"],
                "p_target_pushed": stats["adv_p_target"],
                "loss_increase": stats[f"adv_{ADVERSARIAL_LOSS}"] - stats[f"clean_{ADVERSARIAL_LOSS}"],
            }
        )
    return rows
