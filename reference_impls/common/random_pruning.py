"""Random visual-token pruning: the baseline every token-compression method must beat.

Keeps a uniformly random subset of ``round(budget * n)`` post-merger visual tokens per sequence
and drops the rest before the language model; the kept tokens keep their original 3-D M-RoPE
positions (:mod:`reference_impls.common.visual_tokens`). Token-pruning papers report that
random or uniform selection is a surprisingly strong baseline, which is why every method page
shows it next to the method.

Paper: none (a baseline, not a published method).

Upstream: none (a baseline); ``random_keep`` is a uniform draw without replacement.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl(); inputs = tiny_inputs(model)
    >>> method = RandomPruning(budget=0.25)
    >>> with method(model):
    ...     logits = model(**inputs).logits
    >>> method.stats
    {'visual_in': 16, 'visual_kept': 4}

Deviations / guesses:
    The draw is seeded (``seed``) and advances with each prefill, so a benchmark run is
    reproducible; each sequence of a batch gets its own draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register
from .visual_tokens import Selection, VisualContext, VisualTokenMethod, keep_count

__all__ = ["RandomPruning", "random_keep"]


def random_keep(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices out of ``n``, ascending. ``(k,)``."""
    return torch.randperm(n, generator=generator)[:k].sort().values


@register("random-pruning", family="encoding-compression-attention-agnostic", kind="visual-token")
@dataclass
class RandomPruning(VisualTokenMethod):
    """Keep a random ``budget`` fraction of the visual tokens (baseline)."""

    budget: float = 0.5
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def select(self, ctx: VisualContext) -> Selection:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        keep = [random_keep(n, keep_count(n, self.budget), self._generator) for n in ctx.visual_counts]
        return Selection(keep=keep)
