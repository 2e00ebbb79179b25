"""O-LoRA: a new LoRA per task, softly pushed orthogonal to earlier LoRAs' down-projections.

Each task adds a LoRA bank while earlier banks stay frozen and active (their deltas sum at
inference, no routing). The training loss adds ``λ Σ_j ‖A_j A_tᵀ‖_1`` over earlier banks ``j``
and layers, which pushes the new down-projection's rows away from the old ones. Orthogonality
is only encouraged, in parameter space: the outputs on old inputs carry no guarantee, which is
the contrast with HF-OLB's hard, activation-aware constraint.

Paper: O-LoRA (EMNLP Findings 2023, cmnfriend/O-LoRA), as described in the HF-OLB design note
section 4.1 (no arXiv id recorded in our paper data); compared in arXiv 2606.02042's setting.

Examples:
    >>> from reference_impls.continual_ad.olora import OLoRA
    >>> OLoRA().lambda_1
    0.5

Deviations / guesses: λ1 = 0.5 (design note); O-LoRA's extra L2 term on the new bank is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.continual_ad.oracle_lora import OracleLoRA
from reference_impls.registry import register

__all__ = ["OLoRA", "olora_penalty"]


def olora_penalty(A_new: torch.Tensor, A_old: list[torch.Tensor]) -> torch.Tensor:
    """Σ_j ‖A_j A_newᵀ‖_1 (element-wise L1) for down-projections (r, d_in)."""
    return sum((A @ A_new.T).abs().sum() for A in A_old) if A_old else A_new.sum() * 0


@register("o-lora", family="continual-regularization", kind="continual-ad")
@dataclass
class OLoRA(OracleLoRA):
    """Per-task banks, all summed, with the O-LoRA penalty of weight ``lambda_1``."""

    stack_old: bool = True
    lambda_1: float = 0.5

    def _penalty(self, name: str):
        old = [b for b in self.banks.owner if b != name]
        if not old:
            return None
        layers = list(self.banks.ranks[name])

        def penalty() -> torch.Tensor:
            total = sum(olora_penalty(self.banks.factors(name, l)[0], [self.banks.factors(b, l)[0] for b in old])
                        for l in layers)
            return self.lambda_1 * total

        return penalty
