"""One trainer for unlearning and other training-based mitigations, with an optional SAM step.

:class:`UnlearningTrainer` minimises a weighted sum of :class:`~.terms.Term` objects over the
trainable parameters of a model (the full model, or only the LoRA tensors after
:func:`apply_lora`). Each step it computes two gradient groups and adds them **by parameter
identity**:

1. the *adversarial* terms (the forget loss; a term is adversarial by its ``Term.adversarial``
   flag, never by its name) -- at the weights ``theta`` or, when a
   :class:`SAMConfig` is set, at ``theta + eps`` with ``eps = rho g / ||g||`` and ``g`` the
   gradient of those terms alone (SARE's targeted SAM, reconstruction of arXiv 2601.16527);
2. every other term (retain, grounded, KL) at ``theta``.

The perturbed weights are restored by copying a saved clone back (bit-exact; subtracting
``eps`` again is not), then the optimiser steps. ``SAMConfig(scope="all")`` is vanilla SAM
(``eps`` from the full objective and every term at ``theta + eps``), the untargeted control.
``param_filter`` restricts ``eps`` to LoRA tensors, to a predicate over names, and
``saliency`` keeps only the top fraction of ``|g|`` entries.

Reuse: a new training-based method (DPO, grounded fine-tuning, relearning attacks) is a list of
terms; a term's loss gets the trainer, so it can call :meth:`UnlearningTrainer.logits` and the
frozen reference's :meth:`UnlearningTrainer.reference_logits` (cached per step).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl
    >>> from reference_impls.hallucination.terms import npo_term, nll_term
    >>> model = tiny_qwen25vl()
    >>> trainer = UnlearningTrainer(model, [npo_term(0.5), nll_term("retain")],
    ...                             TrainerConfig(lr=5e-4, sam=SAMConfig(rho=0.05)))
    >>> # trainer.step({"forget": forget_batch, "retain": retain_batch}) -> dict of stats

Deviations / guesses: the paper's code is not public; ``rho``, which terms are perturbed, the
filter and the saturation threshold (0.9, our choice) are parameters, not findings. The full
design and the reason for each choice: ``reference_impls/hallucination/sare/README.md``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .terms import Term
from .unlearning_losses import sequence_logprob

__all__ = ["SAMConfig", "TrainerConfig", "UnlearningTrainer", "apply_lora", "MODEL_KEYS", "ADVERSARIAL_LOSS"]

MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
ADVERSARIAL_LOSS = "adversarial_loss"
"""Stats key of the unweighted sum of the adversarial terms' losses (those with ``Term.adversarial``).
Under SAM it comes as ``"clean_adversarial_loss"`` (at ``theta``) and ``"adv_adversarial_loss"``
(at ``theta + eps``); the calibration checks and :func:`~reference_impls.hallucination.sare.calibrate_rho`
read it instead of guessing the forget term's name."""
ParamFilter = str | Callable[[str, nn.Parameter], bool]


@dataclass
class SAMConfig:
    """The sharpness-aware perturbation of the adversarial terms (SARE's Targeted-SAM step).

    Why each default: ``reference_impls/hallucination/sare/README.md``, sections 4 and 5.
    """

    rho: float = 0.05
    """Radius of the perturbation ball, ``||eps||_2 = rho``. Calibrate it per model with
    :func:`~reference_impls.hallucination.sare.calibrate_rho`; 0 turns SAM into plain descent."""
    scope: str = "forget"
    """``"forget"``: eps from the adversarial terms only (targeted); ``"all"``: vanilla SAM."""
    param_filter: ParamFilter = "all"
    """``"all"`` trainable tensors, ``"lora"`` (names containing ``lora_``) or ``(name, p) -> bool``."""
    saliency: float | None = None
    """Keep only this fraction of the largest ``|g|`` entries of the filtered set (None: off)."""
    adaptive: bool = False
    """ASAM: ``eps = rho T^2 g / ||T g||`` with ``T = |w| + eta``."""
    eta: float = 0.01
    """ASAM's offset in ``T = |w| + eta`` (only read when ``adaptive``); keeps zero weights perturbable."""
    restore: str = "clone"
    """``"clone"`` (bit-exact) or ``"subtract"`` (saves memory, not exact)."""
    saturation: float = 0.9
    """Warn when eps lifts the target probability from below this to above it."""
    stall_window: int = 20
    """Warn when the clean adversarial loss has not decreased over this many steps while ``rho > 0``."""


@dataclass
class TrainerConfig:
    """Optimiser settings of :class:`UnlearningTrainer` (AdamW)."""

    lr: float = 5e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (scaled by ``lr``, so an lr-0 step changes nothing)."""
    grad_clip: float | None = None
    """Clip the combined gradient to this global norm before the step (None: off)."""
    sam: SAMConfig | None = None
    """The sharpness-aware perturbation, or None for plain gradient descent on the terms."""


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    modules: Iterable[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on the language model's linear layers only."""
    from peft import LoraConfig, get_peft_model

    pattern = r".*language_model.*\.(" + "|".join(modules) + r")$"
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0))


class UnlearningTrainer:
    """Minimises weighted :class:`Term` objects; see the module docstring for the step."""

    def __init__(
        self,
        model: nn.Module,
        terms: list[Term],
        config: TrainerConfig | None = None,
        reference: nn.Module | None = None,
    ):
        self.model, self.terms, self.config = model, list(terms), config or TrainerConfig()
        self.named_params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.reference = reference
        self._uses_adapter_reference = False
        if reference is None and any(term.needs_reference for term in self.terms):
            if hasattr(model, "disable_adapter"):  # peft: the base model is the frozen reference
                self._uses_adapter_reference = True
            else:
                self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self._ref_cache: dict[int, torch.Tensor] = {}
        self._warned: set[str] = set()

    # -- forward helpers used by terms -------------------------------------------------------
    def logits(self, batch: dict, model: nn.Module | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) of ``model`` (default: the trained model) on ``batch``."""
        inputs = {key: batch[key] for key in MODEL_KEYS if key in batch}
        return (model or self.model)(**inputs, use_cache=False).logits

    @torch.no_grad()
    def reference_logits(self, batch: dict) -> torch.Tensor:
        """Logits of the frozen reference on ``batch``, cached for the current step."""
        key = id(batch)
        if key not in self._ref_cache:
            if self._uses_adapter_reference:
                with self.model.disable_adapter():
                    self._ref_cache[key] = self.logits(batch).detach()
            else:
                self._ref_cache[key] = self.logits(batch, self.reference).detach()
        return self._ref_cache[key]

    def reference_seq_logprob(self, batch: dict) -> torch.Tensor:
        """Summed masked label log-probabilities under the reference. Shape (B,)."""
        return sequence_logprob(self.reference_logits(batch), batch["labels"], batch["mask"])

    # -- the step ----------------------------------------------------------------------------
    def _objective(
        self, terms: list[Term], batches: dict[str, dict], prefix: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, stats, adversarial = 0.0, {}, []
        for term in terms:
            weight = term.weight_at(self.step_count)
            value, extra = term.loss(self, batches[term.batch])
            total = total + weight * value
            stats[f"{prefix}{term.name}"] = float(value.detach())
            stats.update({f"{prefix}{key}": val for key, val in extra.items()})
            if term.adversarial:
                adversarial.append(stats[f"{prefix}{term.name}"])
        if adversarial:
            stats[f"{prefix}{ADVERSARIAL_LOSS}"] = sum(adversarial)
        return total, stats

    def _grads(self, loss, params: list[nn.Parameter]) -> list[torch.Tensor]:
        if not torch.is_tensor(loss) or not loss.requires_grad:
            return [torch.zeros_like(p) for p in params]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def _perturbed(self) -> list[tuple[str, nn.Parameter]]:
        chosen = self.config.sam.param_filter
        if chosen == "all":
            return self.named_params
        if chosen == "lora":
            return [(n, p) for n, p in self.named_params if "lora_" in n]
        if callable(chosen):
            return [(n, p) for n, p in self.named_params if chosen(n, p)]
        raise ValueError(f"unknown param_filter {chosen!r}")

    def epsilon(self, batches: dict[str, dict]) -> tuple[dict[nn.Parameter, torch.Tensor], dict[str, float]]:
        """The SAM perturbation at the current weights, keyed by parameter (empty when skipped).

        Returns:
            ``({param: eps}, stats)`` with the clean adversarial loss and ``||g||`` in stats.
        """
        sam = self.config.sam
        terms = self.terms if sam.scope == "all" else [t for t in self.terms if t.adversarial]
        named = self._perturbed()
        loss, stats = self._objective(terms, batches, "clean_")
        grads = self._grads(loss, [p for _, p in named])
        if sam.saliency is not None:
            flat = torch.cat([g.abs().flatten() for g in grads])
            keep = max(1, int(round(sam.saliency * flat.numel())))
            threshold = flat.topk(keep).values.min()
            grads = [g * (g.abs() >= threshold) for g in grads]
        scale = [(p.detach().abs() + sam.eta) if sam.adaptive else None for _, p in named]
        scaled = [g if s is None else s * g for g, s in zip(grads, scale)]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in scaled))
        stats["grad_norm"] = float(norm)
        if sam.rho > 0 and not (math.isfinite(stats["grad_norm"]) and stats["grad_norm"] > 0):
            stats["sam_skipped"] = 1.0
            return {}, stats
        eps = {}
        for (_, p), g, s in zip(named, grads, scale):
            direction = g if s is None else s * s * g
            eps[p] = (sam.rho * direction / (norm.to(g.dtype) + 1e-12)).detach()
        return eps, stats

    def gradients(self, batches: dict[str, dict]) -> tuple[dict[nn.Parameter, torch.Tensor], dict[str, float]]:
        """The combined gradient of one step, keyed by parameter, without stepping.

        Adversarial terms are differentiated at ``theta + eps`` (or ``theta`` without SAM), the
        other terms at ``theta``; the weights are restored before returning.
        """
        self._ref_cache.clear()
        sam = self.config.sam
        if sam is not None and sam.scope == "all":
            adversarial, clean = self.terms, []
        else:
            adversarial = [t for t in self.terms if t.adversarial]
            clean = [t for t in self.terms if not t.adversarial]
        total = {p: torch.zeros_like(p) for p in self.params}
        stats: dict[str, float] = {}
        if adversarial:
            eps = {}
            if sam is not None:
                eps, eps_stats = self.epsilon(batches)
                stats.update(eps_stats)
                saved = {p: p.detach().clone() for p in eps} if sam.restore == "clone" else {}
                with torch.no_grad():
                    for p, e in eps.items():
                        p.add_(e)
            try:
                loss, term_stats = self._objective(adversarial, batches, "adv_" if sam is not None else "")
                grads = self._grads(loss, self.params)
            finally:
                with torch.no_grad():
                    for p, e in eps.items():
                        if sam.restore == "clone":
                            p.copy_(saved[p])
                        else:
                            p.sub_(e)
            stats.update(term_stats)
            for p, g in zip(self.params, grads):
                total[p] += g
            if eps:
                stats["eps_norm"] = float(torch.sqrt(sum((e.double() ** 2).sum() for e in eps.values())))
        if clean:
            loss, term_stats = self._objective(clean, batches, "")
            stats.update(term_stats)
            for p, g in zip(self.params, self._grads(loss, self.params)):
                total[p] += g
        return total, stats

    def step(self, batches: dict[str, dict]) -> dict[str, float]:
        """One optimisation step on ``batches`` (one batch per term's ``batch`` key). Returns stats."""
        total, stats = self.gradients(batches)
        for p in self.params:
            p.grad = total[p]
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.sam is not None:
            self._check_calibration(stats)
        self.step_count += 1
        self.history.append(stats)
        return stats

    def _check_calibration(self, stats: dict[str, float]) -> None:
        """Warn when rho saturates the perturbed target probability or the forget loss stalls."""
        sam = self.config.sam
        p_adv, p_clean = stats.get("adv_p_target"), stats.get("clean_p_target")
        # Only a perturbation that *causes* saturation is a calibration problem: before
        # unlearning the hallucinated word is already likely at theta itself.
        saturated = p_adv is not None and p_clean is not None and p_clean < sam.saturation < p_adv
        if saturated and "saturation" not in self._warned:
            self._warned.add("saturation")
            warnings.warn(
                f"SAM: p_target at theta+eps is {p_adv:.3f} > {sam.saturation}: rho is too large, the forget gradient vanishes",
                RuntimeWarning,
                stacklevel=3,
            )
        losses = [h.get(f"clean_{ADVERSARIAL_LOSS}") for h in self.history + [stats]]
        window = sam.stall_window
        if len(losses) > window and losses[-1] is not None and losses[-1 - window] is not None:
            if losses[-1] >= losses[-1 - window] and sam.rho > 0 and "stall" not in self._warned:
                self._warned.add("stall")
                warnings.warn(
                    "SAM: the forget loss has not decreased over the last window while rho > 0",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def fit(self, batches: Callable[[int], dict[str, dict]], steps: int) -> list[dict[str, float]]:
        """Run ``steps`` steps; ``batches(step)`` returns the batch dict of each step."""
        for _ in range(steps):
            self.step(batches(self.step_count))
        return self.history
