"""O-LoRA: a new LoRA per task, softly pushed orthogonal to earlier LoRAs' down-projections.

Each task adds a LoRA bank while earlier banks stay frozen and active (their deltas sum at
inference, no routing). The training loss adds ``λ1 Σ_j ‖A_j A_tᵀ‖_1`` over earlier banks ``j``
and layers, which pushes the new down-projection's rows away from the old ones, plus an optional
``λ2 Σ (‖A_t‖_2 + ‖B_t‖_2)`` on the new bank. Orthogonality is only encouraged, in parameter
space: the outputs on old inputs carry no guarantee, which is the contrast with HF-OLB's hard,
activation-aware constraint.

Paper: arXiv 2310.14152 (O-LoRA, Wang et al., EMNLP Findings 2023); compared in arXiv 2606.02042's
setting.
Upstream: cmnfriend/O-LoRA src/uie_trainer_lora.py (``UIETrainer.training_step``) @
2a2e620c4ed97aa07c5591b1da4640b2cbc6a846: ``orthogonal_loss`` sums ``|lora_A @ loranew_Aᵀ|``
over adapted modules (``lora_A`` holds the earlier tasks' A rows stacked, so this equals our sum
over earlier banks) and ``bias_loss`` sums ``torch.norm(p)`` (Frobenius) over the new A and B;
``loss + λ1 orthogonal_loss + λ2 bias_loss``.

Examples:
    >>> from reference_impls.continual_ad.olora import OLoRA
    >>> OLoRA().lambda_1, OLoRA().lambda_2
    (0.5, 0.0)

Faithful to upstream: both penalties and the weights λ1 = 0.5, λ2 = 0 that O-LoRA's training
scripts pass (λ2 = 0 turns the L2 term off).

Deviations / guesses: the banks are peft LoRAs on the U-Net's adapted layers (convs flattened
like ``F.unfold``), trained on the denoising loss instead of a T5/LLaMA language-model loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.continual_ad.oracle_lora import OracleLoRA
from reference_impls.registry import register

__all__ = ["OLoRA", "olora_penalty", "l2_penalty"]


def olora_penalty(A_new: torch.Tensor, A_old: list[torch.Tensor]) -> torch.Tensor:
    """Σ_j ‖A_j A_newᵀ‖_1 (element-wise L1) for down-projections (r, d_in)."""
    return sum((A @ A_new.T).abs().sum() for A in A_old) if A_old else A_new.sum() * 0


def l2_penalty(A_new: torch.Tensor, B_new: torch.Tensor) -> torch.Tensor:
    """‖A_new‖_2 + ‖B_new‖_2 (Frobenius norms, not squared), O-LoRA's ``bias_loss`` for one layer."""
    return torch.linalg.norm(A_new) + torch.linalg.norm(B_new)


@register("o-lora", family="continual-regularization", kind="continual-ad")
@dataclass
class OLoRA(OracleLoRA):
    """Per-task banks, all summed, with the O-LoRA penalty of weight ``lambda_1``."""

    stack_old: bool = True
    lambda_1: float = 0.5
    """Weight of the orthogonality penalty."""
    lambda_2: float = 0.0
    """Weight of the L2 penalty on the new bank (0: off, as in O-LoRA's scripts)."""

    def _penalty(self, name: str):
        old = [b for b in self.banks.owner if b != name]
        if not old and not self.lambda_2:
            return None
        layers = list(self.banks.ranks[name])

        def penalty() -> torch.Tensor:
            total = torch.zeros(())
            if old:
                total = self.lambda_1 * sum(
                    olora_penalty(self.banks.factors(name, l)[0], [self.banks.factors(b, l)[0] for b in old])
                    for l in layers
                )
            if self.lambda_2:
                total = total + self.lambda_2 * sum(l2_penalty(*self.banks.factors(name, l)) for l in layers)
            return total

        return penalty
