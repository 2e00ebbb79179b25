"""VisionSelector: a small trained scorer picks the visual tokens the LLM keeps (learned compressor).

VisionSelector: End-to-End Learnable Visual Token Compression for Efficient Multimodal LLMs.
A light "learnable importance scorer" sits after the vision tower's merger, outside the frozen
backbone: two linear maps give every visual token a query and a key, and a token's score is the
mean of its scaled query-key products over all visual tokens of the prompt (one simplified
attention map, averaged over its keys). At inference the top-scored fraction is kept and the rest
never reaches the LLM (before the first layer, so fused attention kernels work). Only the scorer
is trained (12.85M parameters on Qwen2.5-VL-7B, the LLM and vision tower frozen): a differentiable
top-k turns the scores into a soft mask (sigmoid of score + t, with t found by bisection so that
the mask sums to k) that scales the visual embeddings, the loss is the answer's cross-entropy plus
a binary cross-entropy pulling the soft mask towards the hard top-k mask, and that term's weight is
annealed upwards during training (the paper's curriculum), so that training ends close to the hard
selection used at inference. It is the representative of the learned-compressor family.

Paper: arXiv 2510.16598

Upstream: JulietChoo/VisionSelector (the official repository, README @
0bd6c658ab1162f43489399c428944b203105256). Its model code is not in the searchable index; the
rule below was read from the fork ygywzb/VisionSelector @ 6e23a08358e3b73bad53d5d4a69d8dc2a833b749:
``qwen-vl-finetune/compression_method/selector_scorer.py`` (``TransformerScorer``: ``k_proj``,
``q_proj`` to ``hidden_dim = out_hidden_size // 2``, weights normal(std 1e-4), zero biases; scores
= mean over keys of ``q k^T / sqrt(hidden_dim)``), ``qwen-vl-finetune/compression_method/selector_model.py``
(``TopK``/``_find_ts``: 64 bisection steps for t in ``[-max - 10, -min + 10]``, mask =
``sigmoid(x + t)``, backward = ``diag(v) - v v^T / sum(v)`` with ``v = sigmoid'(x + t)``; training:
visual embeddings times the soft mask, loss = CE + ``regularization_weight * BCE(soft, hard top-k)``;
``k = int(n * budget)``), ``qwen-vl-finetune/qwenvl/train/train_qwen_selector.py``
(``ScheduledWeightTrainer``: weight linear in step from ``reg_weight_start`` to ``reg_weight_end``),
``qwen-vl-finetune/scripts/sft_3b_debug.sh`` (budget 0.2, weights 0.1 -> 2.0, lr 5e-5 cosine, 1 epoch)
and ``qwen-evaluation/token_compression/selector_model.py`` (inference: ``topk`` of the scores on the
detached merger outputs, ``max(1, int(n * budget))`` kept, indices sorted, every other token and
the kept tokens' original M-RoPE positions kept). :func:`selector_scores`, :func:`soft_topk_mask`
and :func:`curriculum_weight` are our versions of these (parity test).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.vision_selector import VisionSelector
    >>> model = tiny_qwen25vl()
    >>> method = VisionSelector(budget=0.25, checkpoint=None)  # untrained scorer (upstream's init)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"], method.load(model.config.text_config.hidden_size)[1]
    (4, 'untrained')

Deviations:
    - Count: ``round(budget * n)`` (at least 1), as every method here, where upstream floors
      ``int(n * budget)``.
    - Several images (and rows of a batch): each row's visual tokens are scored and ranked jointly,
      as upstream's batch-1 evaluation does with all images of a prompt.
    - ``checkpoint="auto"`` (default) loads the committed scorer trained on ToyVLM v2 when the model's
      hidden size matches it, and otherwise (any other model) warns and uses an untrained scorer (``load(width)``
      says which); ``None`` always starts untrained (seeded by ``seed``), a path loads that file.
    - ``layer=K`` (off by default) scores the hidden states entering layer K; ``positions="renumber"``
      renumbers the kept tokens (upstream keeps their positions, our default).
    - Training (``reference_impls.prefilling.train_vision_selector``) follows upstream's losses, soft
      mask and curriculum, with a recipe scaled to a CPU and a 3M-parameter model (Adam at a higher
      learning rate, smaller scenes); its manifest lists the differences.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, Positions, SingleLayerDrop, keep_top_visual
from reference_impls.registry import register

__all__ = [
    "CHECKPOINT_DIR",
    "SelectorScorer",
    "VisionSelector",
    "curriculum_weight",
    "load_selector",
    "save_selector",
    "selector_scores",
    "soft_topk_mask",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "vision_selector"
"""The committed scorer trained on ToyVLM v2 (``scorer.pt`` and ``manifest.json``)."""


class SelectorScorer(nn.Module):
    """Upstream's learnable importance scorer: one query/key projection pair, no values, no heads."""

    def __init__(self, in_features: int, hidden_dim: int | None = None, init_scale: float = 1e-4):
        super().__init__()
        self.hidden_dim = hidden_dim or in_features // 2
        self.q_proj = nn.Linear(in_features, self.hidden_dim)
        self.k_proj = nn.Linear(in_features, self.hidden_dim)
        for proj in (self.q_proj, self.k_proj):  # near-zero scores at the start (upstream's init)
            nn.init.normal_(proj.weight, std=init_scale)
            nn.init.zeros_(proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., n, D) visual tokens -> (..., n) scores."""
        return selector_scores(tokens, self.q_proj, self.k_proj, self.hidden_dim)


def selector_scores(tokens: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, hidden_dim: int) -> torch.Tensor:
    """Mean over keys of the scaled query-key products: (..., n, D) -> (..., n)."""
    query, key = q_proj(tokens), k_proj(tokens)  # (..., n, h)
    # mean_j q_i . k_j = q_i . mean_j k_j: the (n, n) map of upstream is never formed.
    return (query * key.mean(-2, keepdim=True)).sum(-1) / hidden_dim**0.5


def _threshold(scores: torch.Tensor, k: int, steps: int = 64) -> torch.Tensor:
    """(B, 1) shift t with sum(sigmoid(scores + t)) = k, by upstream's bisection."""
    lo = -scores.amax(-1, keepdim=True) - 10
    hi = -scores.amin(-1, keepdim=True) + 10
    for _ in range(steps):
        mid = (lo + hi) / 2
        below = torch.sigmoid(scores + mid).sum(-1, keepdim=True) < k
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        shift = _threshold(scores.detach(), k)
        ctx.save_for_backward(scores, shift)
        return torch.sigmoid(scores + shift)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scores, shift = ctx.saved_tensors
        mask = torch.sigmoid(scores + shift)
        v = mask * (1 - mask)  # sigmoid'(x + t); t moves with x so that the sum stays k
        gv = grad * v
        return gv - gv.sum(-1, keepdim=True) * v / v.sum(-1, keepdim=True), None


def soft_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Differentiable top-k (training): (B, n) scores -> (B, n) mask in (0, 1) summing to ``k`` per row."""
    if not 0 < k < scores.shape[-1]:
        raise ValueError(f"soft top-k needs 0 < k < n, got k={k}, n={scores.shape[-1]}")
    return _SoftTopK.apply(scores, k)


def hard_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n) float mask with 1 at the ``k`` highest scores of each row (the BCE target, no gradient)."""
    return torch.zeros_like(scores).scatter(-1, scores.detach().topk(k, dim=-1).indices, 1.0)


def curriculum_weight(step: int, total: int, start: float = 0.1, end: float = 2.0) -> float:
    """Weight of the soft-vs-hard BCE at ``step`` of ``total``: linear from ``start`` to ``end``."""
    return start if total <= 0 else start + (end - start) * min(step / total, 1.0)


def save_selector(scorer: SelectorScorer, path: str | Path, manifest: dict | None = None) -> Path:
    """Save the scorer's weights (``scorer.pt``) and how it was made (``manifest.json``)."""
    import json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to(torch.float16).clone() for name, tensor in scorer.state_dict().items()}
    torch.save(state, path / "scorer.pt")
    (path / "manifest.json").write_text(json.dumps(manifest or {}, indent=1) + "\n")
    return path


def load_selector(path: str | Path | None = None) -> SelectorScorer:
    """Load a scorer saved by :func:`save_selector` (default: the committed one), float32."""
    path = Path(path) if path is not None else CHECKPOINT_DIR
    file = path / "scorer.pt" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"no selector at {file} (train one: python -m reference_impls.prefilling.train_vision_selector)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    in_features, hidden = state["q_proj.weight"].shape[1], state["q_proj.weight"].shape[0]
    scorer = SelectorScorer(in_features, hidden)
    scorer.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return scorer.eval()


@register("vision-selector", family="prefilling-learned", kind="visual-token")
@dataclass
class VisionSelector(SingleLayerDrop):
    """VisionSelector configuration.

    Args:
        budget: fraction of visual tokens kept (0 < budget <= 1).
        checkpoint: ``"auto"`` (the committed ToyVLM v2 scorer when the width matches, else untrained),
            ``None`` (untrained, upstream's near-zero init) or a path to a saved scorer.
        seed: seed of an untrained scorer's initialisation.
        layer: 0 selects among the embeddings entering the LLM (upstream: the merger outputs); K > 0 at layer K.
        positions: ``"keep"`` the original M-RoPE positions (default, upstream) or ``"renumber"`` them.
    """

    budget: float = 0.1
    checkpoint: str | None = "auto"
    seed: int = 0
    layer: int = 0
    positions: Positions = "keep"
    stats: dict = field(default_factory=dict, repr=False, compare=False)
    _loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """Scorers built so far, by token width: ``(scorer, "trained" | "untrained")``."""

    def load(self, width: int) -> tuple[SelectorScorer, str]:
        """The scorer for ``width``-wide tokens and whether it is trained (see ``checkpoint``)."""
        if width not in self._loaded:
            scorer = None
            if self.checkpoint == "auto" and (CHECKPOINT_DIR / "scorer.pt").exists():
                committed = load_selector(CHECKPOINT_DIR)
                scorer = committed if committed.q_proj.in_features == width else None
            elif self.checkpoint not in (None, "auto"):
                scorer = load_selector(self.checkpoint)
                if scorer.q_proj.in_features != width:
                    raise ValueError(
                        f"selector {self.checkpoint} scores {scorer.q_proj.in_features}-wide tokens, not {width}"
                    )
            if scorer is not None:
                self._loaded[width] = (scorer, "trained")
            else:
                if self.checkpoint == "auto":
                    warnings.warn(
                        f"no trained VisionSelector scorer fits {width}-wide tokens: using an untrained one "
                        "(near-zero scores, an arbitrary ranking)",
                        stacklevel=2,
                    )
                state = torch.random.get_rng_state()
                torch.manual_seed(self.seed)
                self._loaded[width] = (SelectorScorer(width).eval(), "untrained")
                torch.random.set_rng_state(state)
        return self._loaded[width]

    def select(self, ctx: DropContext) -> torch.Tensor:
        scorer, _ = self.load(ctx.hidden.shape[-1])
        scores = torch.zeros(ctx.visual.shape, device=ctx.hidden.device)  # (B, n)
        with torch.no_grad():
            for b in range(ctx.hidden.shape[0]):
                scores[b, ctx.visual[b]] = scorer(ctx.hidden[b, ctx.visual[b]].float())
        return keep_top_visual(scores, ctx.visual, keep_count(ctx.n_visual_in, self.budget))
