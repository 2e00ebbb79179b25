"""Grounded instruction tuning: briefly fine-tune on captions and probes without the co-occurrence bias.

Idea: a captioner that names B whenever it sees A learnt it from its data: B nearly always
co-occurs with A, and annotators filled B in when it was missing. Fine-tuning on data where the
annotations are truthful and the co-occurrence is broken up -- A without B as often as A with B,
with *negative* yes/no instructions ("is there a square ?" -> "no") on exactly those scenes --
teaches the model to look instead of guessing. It is ordinary supervised fine-tuning; the work
is in the data.

Paper: arXiv 2306.14565 (LRV-Instruction: robust instruction tuning with balanced positive and
negative instructions) is the closest listed paper; our data is a synthetic analogue, not LRV.
Upstream: none followed (ordinary supervised fine-tuning; the method is in the data, for which we
use our synthetic analogue, so there is no code to match).

Examples:
    >>> from reference_impls.hallucination.captioner import CaptionWorld
    >>> scenes = balanced_scenes(CaptionWorld(), 200, seed=0)
    >>> with_a = [s for s in scenes if "circle" in s.truth]
    >>> 0.4 < sum("square" not in s.truth for s in with_a) / len(with_a) < 0.6
    True

Implementation: :func:`balanced_scenes` rebalances scene statistics (A-without-B topped up to
half of the A scenes); :meth:`GroundedInstructionTuning.batches` draws truthful captions and
probes from them (``retain_batch(..., clean=True)``, whose probes ask about B on half of the
A-without-B scenes); training is one NLL term of the shared trainer on the ``"balanced"`` batch.
Each batch also carries ``truth`` (the scenes' object sets) so a test can check what was used.

Deviations / guesses: 60 steps, batch 16, lr 5e-4 (language model only, as for the unlearning
methods); the balance target 0.5 is a parameter. In the committed ToyVLM world about 40% of the
A scenes already lack B, so most of the bias this removes is the *annotation* bias (captions and
answers that name an absent B), not the scene statistics.

Measured on ToyVLM (comparison benchmark, 2 seeds): the targeted rate fell from 91% to 0%, with
clean captions intact and the best POPE F1 of all methods (84). It was not robust to relearning
(100% after 10 steps). A 5-step run (the notebook's quick mode) is not enough (44%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from reference_impls.registry import register

from .captioner import CaptionScene, CaptionWorld, retain_batch
from .terms import nll_term
from .trainer import TrainerConfig, UnlearningTrainer

__all__ = ["GroundedInstructionTuning", "balanced_scenes"]


def balanced_scenes(world: CaptionWorld, n: int, seed: int, balance: float = 0.5) -> list[CaptionScene]:
    """``n`` scenes from ``world`` plus enough A-without-B scenes that they make up ``balance`` of all A scenes."""
    scenes = world.scenes(n, seed)
    a_scenes = [s for s in scenes if world.a in s.truth]
    missing = sum(world.is_trigger(s.truth) for s in a_scenes)
    extra = int(round((balance * len(a_scenes) - missing) / (1 - balance)))
    if extra > 0:
        scenes = scenes + world.scenes(extra, seed + 7919, "trigger")
    order = np.random.default_rng(seed).permutation(len(scenes))
    return [scenes[i] for i in order]


@register("grounded-tuning", family="grounded-instruction-tuning", kind="hallucination")
@dataclass
class GroundedInstructionTuning:
    """Supervised fine-tuning on balanced, truthfully annotated captions and yes/no probes."""

    lr: float = 5e-4
    steps: int = 60
    batch: int = 16
    pool: int = 600
    balance: float = 0.5

    def batches(self, world: CaptionWorld, vocab, config, seed: int = 0) -> Callable[[int], dict[str, dict]]:
        """``step -> {"balanced": batch}`` drawn from :func:`balanced_scenes` (truthful annotations)."""
        scenes = balanced_scenes(world, self.pool, seed=1000 + seed, balance=self.balance)

        def batches(step: int) -> dict[str, dict]:
            rng = np.random.default_rng([seed, 31, step])
            chosen = [scenes[i] for i in rng.choice(len(scenes), size=self.batch, replace=False)]
            batch = retain_batch(world, chosen, vocab, config, rng, clean=True)
            batch["truth"] = [s.truth for s in chosen]
            return {"balanced": batch}

        return batches

    def trainer(self, model: nn.Module) -> UnlearningTrainer:
        return UnlearningTrainer(model, [nll_term("balanced")], TrainerConfig(lr=self.lr))

    def train(
        self, model: nn.Module, batches: Callable[[int], dict[str, dict]], steps: int | None = None
    ) -> list[dict[str, float]]:
        """Fine-tune ``model`` in place on ``batches(step)["balanced"]``. Returns per-step stats."""
        return self.trainer(model).fit(batches, self.steps if steps is None else steps)
