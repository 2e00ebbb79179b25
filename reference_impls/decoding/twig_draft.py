"""Training-aware speculative decoding: a distilled "twig" draft grown on the target's shallow layers.

**Growing a Twig to Accelerate Large Vision-Language Models**

A draft that reuses the target's own shallow layers and is *trained* to agree with it. TwigVLM grows a lightweight twig (a few decoder layers and a head, initialised from
the base model's own weights) on an early layer ``K`` of the frozen base VLM and trains only
the twig; the first ``K`` base layers plus the twig then serve as the draft of a
self-speculative decoder, verified by the full model. Here the draft is the target's frozen
vision tower, embeddings and first ``shared_layers`` decoder layers, then ``twig_layers``
trainable decoder layers (copies of the target's next layers) and a trainable final norm and
LM head (copies of the target's). :func:`distill_twig` trains the twig to match the target's
next-token distributions on the target's own greedy outputs; decoding is the unchanged
draft-then-verify loop of :class:`~reference_impls.decoding.speculative.SpeculativeDecoding`,
so strict verification still reproduces the target's greedy output exactly. Before training,
the twig is exactly the training-free early-exit draft at ``shared_layers + twig_layers``
layers, which makes the effect of distillation directly measurable.

Committed twigs (:mod:`reference_impls.decoding.train_twig`): on the captioner, on ToyVLM (one-word
answers) and on ToyVLM v2 (``twig-toyvlm-v2``: chat layout, 16 images first and the question last,
replies of 5-20 tokens decoded until ``<eos>``; 1 shared layer of 6 + 1 twig layer, distilled on the
target's whole greedy replies with the draft seeing 100% and 10% of the visual tokens), benchmarked by
:mod:`reference_impls.bench.speculative_distilled` (``--suite long`` for ToyVLM v2).

Paper: arXiv 2503.14075

Upstream: MILVLG/twigvlm (official code; README @ 10fb909658a5a814cafcb9f9652e01d637759eb1, training
in ``twig_train/`` and ``twigvlm/train/``, self-speculative generation in
``twigvlm/inference/generator_utils/``). Not re-implemented: we take the architecture idea (shared
base layers + twig layers + head as the draft) and reuse our own draft-then-verify loop, whose
greedy verification has a parity test (:mod:`~reference_impls.decoding.speculative`). The twig's
training recipe here is ours.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.decoding.speculative import greedy_decode
    >>> model = tiny_qwen25vl(num_layers=3)
    >>> inputs = tiny_inputs(model)
    >>> draft = grow_twig(model, shared_layers=1, twig_layers=1)
    >>> log = distill_twig(model, draft, [inputs], DistillConfig(steps=2, max_new_tokens=6))
    >>> result = TwigSpeculativeDecoding(twig=draft, num_draft=3)(model, inputs, max_new_tokens=6)
    >>> result.tokens == greedy_decode(model, inputs, max_new_tokens=6).tokens
    True

Deviations:
    - Ours, not TwigVLM's: the training objective (KL between the target's and the draft's
      next-token distributions at temperature ``temperature``, on sequences continued by the
      target's own greedy decoding: sequence-level self-distillation, no ground-truth data),
      the optimiser and step counts, and training on pruned draft prompts (``visual_keeps``).
      TwigVLM trains its twig with LLaVA-1.5's training pipeline and instruction data (its
      README); we did not re-implement or compare its loss.
    - TwigVLM also uses the twig's attention to prune visual tokens (twig-guided token
      pruning) and reuses the base's KV cache for the shared layers; we do neither: the draft
      keeps its own cache and recomputes the shared layers (it may see fewer visual tokens, by
      the rules of ``SpeculativeDecoding``), and there is no tree drafting.
    - The head (final norm and LM head) is a trainable copy of the target's; ``twig_layers=0``
      gives a trained early-exit head only. ``shared_layers`` defaults to half the layers.
    - Guesses for ToyVLM v2 (ours): the twig grows on layer 1 of 6 (TwigVLM grows it on a middle
      layer of a 32-layer model), because at this size a fixed per-forward cost makes deeper drafts
      too expensive to pay off (measured costs in :mod:`reference_impls.decoding.train_twig`); the
      draft's visual tokens are pruned uniformly per image (10%) in training and in the benchmark.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reference_impls.decoding._speculative_prompt import encode_prompt, prune_prompt, text_positions
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode
from reference_impls.registry import register

__all__ = [
    "TwigSpeculativeDecoding",
    "DistillConfig",
    "grow_twig",
    "distill_twig",
    "twig_agreement",
    "save_twig",
    "load_twig",
]


def grow_twig(target: nn.Module, shared_layers: int | None = None, twig_layers: int = 1) -> nn.Module:
    """A draft model: the target's first ``shared_layers`` layers (shared) plus a new twig.

    The result is a model of the target's class whose vision tower, embeddings, rotary
    embedding and first layers *are* the target's modules (no copy), followed by
    ``twig_layers`` copies of the target's next layers and copies of its final norm and LM
    head. Untrained, it computes exactly the target truncated to ``shared_layers + twig_layers``.
    """
    text = target.model.language_model
    total = len(text.layers)
    k = total // 2 if shared_layers is None else shared_layers
    if not 1 <= k <= total or twig_layers < 0 or k + twig_layers > total:
        raise ValueError(f"need 1 <= shared_layers and shared_layers + twig_layers <= {total}, got {k} + {twig_layers}")
    config = copy.deepcopy(target.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = k + twig_layers
    text_config.layer_types = list(text_config.layer_types)[: k + twig_layers]
    with torch.device("meta"):
        draft = type(target)(config)
    inner = draft.model
    inner.visual = target.model.visual
    inner.language_model.embed_tokens = text.embed_tokens
    inner.language_model.rotary_emb = text.rotary_emb
    twig = [copy.deepcopy(layer) for layer in text.layers[k : k + twig_layers]]
    inner.language_model.layers = nn.ModuleList(list(text.layers[:k]) + twig)
    inner.language_model.norm = copy.deepcopy(text.norm)
    draft.lm_head = copy.deepcopy(target.lm_head)
    if any(t.is_meta for t in list(draft.parameters()) + list(draft.buffers())):
        raise RuntimeError("grow_twig left a module uninitialised; the model class is not supported")
    draft.generation_config = copy.deepcopy(target.generation_config)
    draft.twig_shared_layers = k
    return draft.eval()


def _twig_parameters(draft: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable twig parameters by name: twig layers, final norm, LM head."""
    k = draft.twig_shared_layers
    prefixes = ("model.language_model.norm.", "lm_head.") + tuple(
        f"model.language_model.layers.{i}." for i in range(k, len(draft.model.language_model.layers))
    )
    return {name: p for name, p in draft.named_parameters() if name.startswith(prefixes)}


@dataclass
class DistillConfig:
    """Distillation settings (all ours)."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    temperature: float = 1.0
    visual_keeps: tuple[float, ...] = (1.0,)
    """Each prompt is used once per fraction of visual tokens the draft sees (1.0: all)."""
    prune: str = "uniform"
    max_new_tokens: int = 16
    seed: int = 0
    log_every: int = 50


@dataclass
class _Example:
    embeds: torch.Tensor  # (S, D) draft input: (pruned) prompt + the target's tokens but the last
    positions: torch.Tensor  # (3, S)
    teacher: torch.Tensor  # (n, V) target logits predicting its n generated tokens (the last n positions)


@torch.no_grad()
def _examples(
    target: nn.Module, prompts: Sequence[dict], keeps: Sequence[float], prune: str, max_new_tokens: int, seed: int
) -> list[_Example]:
    out = []
    for inputs in prompts:
        tokens = greedy_decode(target, inputs, max_new_tokens).tokens
        prompt = encode_prompt(target, inputs)
        fed = target.get_input_embeddings()(torch.tensor([tokens[:-1]], dtype=torch.long))  # (1, n - 1, D)
        after = text_positions(prompt.next_position, len(tokens) - 1)  # (3, 1, n - 1)
        embeds, positions = torch.cat([prompt.embeds, fed], 1), torch.cat([prompt.positions, after], 2)
        teacher = (
            target(inputs_embeds=embeds, position_ids=positions, use_cache=False).logits[0, -len(tokens) :].float()
        )
        for keep in keeps:
            seen = prune_prompt(prompt, keep, prune, seed)
            out.append(
                _Example(torch.cat([seen.embeds, fed], 1)[0], torch.cat([seen.positions, after], 2)[:, 0], teacher)
            )
    return out


def _student_logits(draft: nn.Module, batch: Sequence[_Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft logits at the answer positions of a right-padded batch, and the teacher's: ``(N, V)`` each."""
    length = max(e.embeds.shape[0] for e in batch)
    embeds = torch.zeros(len(batch), length, batch[0].embeds.shape[1])  # (B, S, D); pads come last, causal
    positions = torch.zeros(3, len(batch), length, dtype=torch.long)  # attention never lets a real token see them
    for b, e in enumerate(batch):
        embeds[b, : e.embeds.shape[0]], positions[:, b, : e.embeds.shape[0]] = e.embeds, e.positions
    logits = draft(inputs_embeds=embeds, position_ids=positions, use_cache=False).logits.float()  # (B, S, V)
    student = torch.cat(
        [logits[b, e.embeds.shape[0] - e.teacher.shape[0] : e.embeds.shape[0]] for b, e in enumerate(batch)]
    )
    return student, torch.cat([e.teacher for e in batch])


@contextmanager
def _train_only_twig(target: nn.Module, draft: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Freeze the target's parameters (shared with the draft) for the duration; yield the twig's."""
    twig = list(_twig_parameters(draft).values())
    saved = [(p, p.requires_grad) for p in target.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    for p in twig:
        p.requires_grad_(True)
    try:
        yield twig
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def distill_twig(
    target: nn.Module, draft: nn.Module, prompts: Sequence[dict], config: DistillConfig | None = None
) -> list[dict]:
    """Train the twig of ``draft`` (from :func:`grow_twig`) to match ``target`` on ``prompts``.

    Each batch-1 prompt is continued by the target's greedy decoding; the loss is
    ``T^2 KL(softmax(target / T) || softmax(draft / T))`` at every position that predicts one
    of those tokens (the first one included), averaged. Only the twig is updated.

    Returns:
        The training log, ``[{"step", "loss", "seconds"}, ...]``.
    """
    config = DistillConfig() if config is None else config
    generator = torch.Generator().manual_seed(config.seed)
    examples = _examples(target, prompts, config.visual_keeps, config.prune, config.max_new_tokens, config.seed)
    log, start, temperature = [], time.perf_counter(), config.temperature
    with _train_only_twig(target, draft) as params:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.steps))
        draft.train()
        for step in range(config.steps):
            index = torch.randperm(len(examples), generator=generator)[: config.batch_size].tolist()
            student, teacher = _student_logits(draft, [examples[i] for i in index])
            loss = temperature**2 * F.kl_div(
                F.log_softmax(student / temperature, -1),
                F.log_softmax(teacher / temperature, -1),
                log_target=True,
                reduction="batchmean",
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % config.log_every == 0 or step == config.steps - 1:
                log.append(
                    {
                        "step": step,
                        "loss": float(f"{loss.item():.5g}"),
                        "seconds": round(time.perf_counter() - start, 2),
                    }
                )
        draft.eval()
    return log


@torch.no_grad()
def twig_agreement(
    target: nn.Module,
    draft: nn.Module,
    prompts: Sequence[dict],
    visual_keep: float = 1.0,
    prune: str = "uniform",
    max_new_tokens: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Teacher-forced top-1 agreement (percent) of the draft with the target on its greedy outputs.

    ``"tokens"``: over every generated position; ``"first"``: the first token only (the one
    answer word of a one-word answer); ``"decode"``: the later positions, the ones a draft
    proposes during speculative decoding (NaN when every output is one token).
    """
    examples = _examples(target, prompts, (visual_keep,), prune, max_new_tokens, seed)
    hits = {"tokens": [], "first": [], "decode": []}
    for start in range(0, len(examples), 64):
        batch = examples[start : start + 64]
        student, teacher = _student_logits(draft, batch)
        match, offset = (student.argmax(-1) == teacher.argmax(-1)).tolist(), 0
        for e in batch:
            n = e.teacher.shape[0]
            hits["tokens"] += match[offset : offset + n]
            hits["first"].append(match[offset])
            hits["decode"] += match[offset + 1 : offset + n]
            offset += n
    return {key: 100 * sum(v) / len(v) if v else float("nan") for key, v in hits.items()}


def save_twig(draft: nn.Module, path: str | Path, manifest: dict | None = None) -> Path:
    """Write the twig's parameters (``twig.safetensors``) and ``manifest.json`` to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: p.detach().contiguous() for name, p in _twig_parameters(draft).items()}, str(path / "twig.safetensors")
    )
    text = draft.config.get_text_config()
    spec = {
        "shared_layers": draft.twig_shared_layers,
        "twig_layers": text.num_hidden_layers - draft.twig_shared_layers,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
    }
    (path / "manifest.json").write_text(json.dumps({**spec, **(manifest or {})}, indent=1) + "\n")
    return path


def load_twig(target: nn.Module, path: str | Path) -> nn.Module:
    """Grow a twig on ``target`` with the shape recorded in ``path`` and load its trained weights."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    text = target.config.get_text_config()
    if (manifest["hidden_size"], manifest["vocab_size"]) != (text.hidden_size, text.vocab_size):
        raise ValueError(f"twig at {path} was trained for another target (hidden/vocab size differ)")
    draft = grow_twig(target, manifest["shared_layers"], manifest["twig_layers"])
    tensors = load_file(str(path / "twig.safetensors"))
    if tensors.keys() != _twig_parameters(draft).keys():
        raise ValueError(f"twig at {path} does not match the grown twig's parameters")
    draft.load_state_dict(tensors, strict=False)
    return draft


@register("twig-speculative", family="speculative-training-aware", kind="decoding")
@dataclass
class TwigSpeculativeDecoding(SpeculativeDecoding):
    """:class:`SpeculativeDecoding` whose draft is a twig grown on the target (same loop).

    ``twig`` is a trained twig checkpoint folder (:func:`save_twig`), a draft from
    :func:`grow_twig` on this target, or ``None`` for an untrained twig (= early exit at
    ``shared_layers + twig_layers`` layers). The draft sees all visual tokens by default.
    """

    draft_visual_keep: float = 1.0
    twig: str | Path | nn.Module | None = field(default=None, repr=False)
    """Checkpoint folder, grown draft, or ``None`` (untrained twig)."""
    shared_layers: int | None = None
    """Target layers under an untrained twig (``None``: half); a checkpoint records its own."""
    twig_layers: int = 1
    """Decoder layers in an untrained twig."""

    def __post_init__(self):
        super().__post_init__()
        if self.draft_model is not None or self.draft_layers is not None:
            raise ValueError("the twig is the draft: leave draft_model and draft_layers unset")
        self._grown: tuple[nn.Module, nn.Module] | None = None  # (target, draft)

    def _draft_model(self, model: nn.Module) -> nn.Module:
        if self._grown is None or self._grown[0] is not model:
            if isinstance(self.twig, nn.Module):
                draft = self.twig
                if draft.model.language_model.layers[0] is not model.model.language_model.layers[0]:
                    raise ValueError("this twig was grown on another model")
            elif self.twig is None:
                draft = grow_twig(model, self.shared_layers, self.twig_layers)
            else:
                draft = load_twig(model, self.twig)
            self._grown = (model, draft)
        return self._grown[1]
