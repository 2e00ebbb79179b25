"""Hallucination-aware DPO: prefer the grounded caption over the model's own hallucinated one.

Idea: direct preference optimisation on pairs that share an image and a prompt: the *chosen*
response is the grounded caption, the *rejected* one is the caption the model actually produced
with a hallucinated object. The loss ``-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) -
(log pi(y_l) - log pi_ref(y_l))])`` raises the chosen caption relative to the rejected one,
measured against a frozen copy of the model, so the policy cannot drift far from where it
started. At the start (policy = reference) the loss is ``log 2`` and the gradient is not zero.

Paper: arXiv 2311.16839 (HA-DPO, hallucination-aware DPO); related: RLHF-V (arXiv 2312.00849);
the loss is DPO's (arXiv 2305.18290, eq. 7).
Upstream: eric-mitchell/direct-preference-optimization trainers.py (``preference_loss``) @
8a4023f5a5bde957b5d44f687569e075ff54e4f7, with its defaults ``label_smoothing`` 0, not IPO, not
reference-free; sequence log-probabilities are sums over the response tokens, as its
``_get_batch_logps`` with ``average_log_prob=False``. We did not compare with HA-DPO's code.

Examples:
    >>> method = HallucinationDPO(beta=0.5)
    >>> [t.name for t in method.terms()]
    ['dpo', 'chosen_nll', 'retain_nll']
    >>> # method.train(model, batches)  # batches(step) -> {"preference": {"chosen", "rejected"}, "retain"}

Implementation: one :class:`~.terms.Term` of the shared
:class:`~.trainer.UnlearningTrainer` reads a ``"preference"`` batch ``{"chosen": batch,
"rejected": batch}`` (each a captioner batch with ``mask`` on the caption and ``<eos>``); the
trainer supplies the frozen reference. An NLL term on the chosen captions (as HA-DPO and RLHF-V
add a language-modelling term) and the usual retain NLL are optional.

Deviations / guesses: the chosen caption is the ground-truth caption of the scene (HA-DPO has
GPT-4 rewrite the hallucinated description); pairs come from the model's own greedy captions of
trigger scenes (the forget split of the unlearning benchmark). Upstream has no default beta
(its config requires one; its README examples use 0.1); beta 0.5, lr 5e-4 and 60 steps fit the
tiny model and are not tuned. The chosen-caption NLL and retain NLL terms (on by default) are
not part of upstream's DPO loss: set their weights to 0 for plain DPO.

Measured on ToyVLM (comparison benchmark, 2 seeds): the targeted rate fell from 91% to 0%,
CHAIR_i to 0, with clean captions intact and POPE F1 up (66.7 to 73). It was not robust: after
10 relearning steps the rate was back at 95% (the never-trained captioner relearned: 100%).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.registry import register

from .captioner import CAPTION_PROMPT, CaptionWorld, encode
from .terms import Term, nll_term
from .trainer import TrainerConfig, UnlearningTrainer
from .unlearning_losses import sequence_logprob

__all__ = ["HallucinationDPO", "dpo_loss", "dpo_term", "preference_batch"]


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO loss from sequence log-probabilities, each (B,); the reference ones carry no gradient.

    Returns:
        Scalar ``-mean log sigmoid(beta ((chosen - ref_chosen) - (rejected - ref_rejected)))``.
    """
    margin = (chosen - ref_chosen.detach()) - (rejected - ref_rejected.detach())  # (B,)
    return -F.logsigmoid(beta * margin).mean()


def dpo_term(beta: float = 0.5, batch: str = "preference", weight: float = 1.0) -> Term:
    """DPO against the trainer's frozen reference on ``{"chosen": ..., "rejected": ...}`` pairs."""

    def loss(trainer: UnlearningTrainer, data: dict):
        good, bad = data["chosen"], data["rejected"]
        chosen = sequence_logprob(trainer.logits(good), good["labels"], good["mask"])
        rejected = sequence_logprob(trainer.logits(bad), bad["labels"], bad["mask"])
        value = dpo_loss(
            chosen, rejected, trainer.reference_seq_logprob(good), trainer.reference_seq_logprob(bad), beta
        )
        return value, {"margin": float((chosen - rejected).mean().detach())}

    return Term("dpo", batch, loss, weight, needs_reference=True)


def preference_batch(
    splits: dict[str, list], index: Sequence[int], vocab, config, world: CaptionWorld
) -> dict[str, dict]:
    """``{"chosen", "rejected"}``: the ground-truth caption vs the model's hallucinated caption."""
    scenes = [splits["scenes"][i] for i in index]
    prompts = [CAPTION_PROMPT] * len(scenes)
    chosen = [world.caption(s.truth) for s in scenes]
    rejected = [" ".join(splits["captions"][i]) for i in index]
    return {
        "chosen": encode(scenes, prompts, chosen, vocab, config),
        "rejected": encode(scenes, prompts, rejected, vocab, config),
    }


@register("dpo", family="preference-optimization", kind="hallucination")
@dataclass
class HallucinationDPO:
    """DPO (+ optional chosen NLL and retain NLL) through the shared trainer."""

    beta: float = 0.5
    lr: float = 5e-4
    steps: int = 60
    weight_chosen_nll: float = 1.0
    weight_retain: float = 1.0

    def terms(self) -> list[Term]:
        terms = [dpo_term(self.beta)]
        if self.weight_chosen_nll:
            chosen = nll_term("preference_chosen", self.weight_chosen_nll)
            terms.append(
                Term(
                    "chosen_nll",
                    "preference",
                    lambda trainer, data: chosen.loss(trainer, data["chosen"]),
                    self.weight_chosen_nll,
                )
            )
        if self.weight_retain:
            terms.append(nll_term("retain", self.weight_retain))
        return terms

    def trainer(self, model: nn.Module, reference: nn.Module | None = None) -> UnlearningTrainer:
        return UnlearningTrainer(model, self.terms(), TrainerConfig(lr=self.lr), reference)

    def train(
        self,
        model: nn.Module,
        batches: Callable[[int], dict[str, dict]],
        steps: int | None = None,
        reference: nn.Module | None = None,
    ) -> list[dict[str, float]]:
        """Fine-tune ``model`` in place; ``batches(step)`` gives ``{"preference", "retain"}``. Returns per-step stats."""
        return self.trainer(model, reference).fit(batches, self.steps if steps is None else steps)
