"""TRIM: keep the visual tokens that the question's embedding singles out (no LLM attention).

Less is More: A Simple yet Effective Token Reduction Method for Efficient Multi-modal LLMs.
TRIM ranks the visual tokens by their similarity to the question before the LLM sees them: the
question goes through CLIP's text tower (one pooled, projected embedding), every visual patch
through CLIP's visual projection, and the dot products, softmaxed over the patches, are the
scores. A fixed fraction of the highest scorers is kept, or, in the adaptive mode, as many as
the interquartile-range rule calls outliers (scores above Q3 + 1.5 IQR). Nothing reads the
LLM's attention, so the selection happens once, before the first layer, and works with fused
attention kernels. It is the representative of the question-guided (text-relevance) family.

Paper: arXiv 2409.10994

Upstream: FreedomIntelligence/TRIM ``llava/model/multimodal_encoder/clip_encoder.py``
(``CLIPVisionTower.token_reduction``, branch ``TextSim``) @ 988896531d65ca18a54347d37566b6e750d85276:
similarity = projected patches @ text embedding; the similarity is *negated* before the softmax
(``similarities = -similarities``), so the code keeps the patches with the lowest raw CLIP
similarity; ``k == -1`` sets the kept fraction to the share of IQR outliers of the softmaxed
scores (``numpy.percentile``, linear); ``int(tokens * k)`` tokens are kept by ``topk``;
``TextSim+`` appends the mean of the dropped tokens as one extra token. Our
:func:`question_relevance` and :func:`iqr_keep_fraction` compute the same scores and counts
(parity test).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.trim import TRIM
    >>> model = tiny_qwen25vl()
    >>> method = TRIM(budget=0.25)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]
    4

Deviations:
    - Scoring space (ToyVLM v2 and Qwen2.5-VL have no CLIP text tower): the visual tokens are the
      embeddings entering the LLM (merger outputs) and the question is the mean of its tokens'
      input embeddings in the same space, i.e. the prompt text after the last visual token (the
      question, and in a real chat template its closing role markers). Upstream uses one pooled
      CLIP text embedding and CLIP-projected patches. A prompt with the question before the images
      (the ToyVLM v1 ablation) leaves only the text after them (there: the ``answer`` marker); a
      prompt with no text after the images is refused.
    - Sign: ``negate=True`` (default) keeps upstream's negation, which is tied to CLIP's patch
      geometry (patch tokens of CLIP align inversely with the text, as the LiteLVLM paper also
      exploits); ``negate=False`` keeps the tokens *most* similar to the question, the reading of
      the paper's text-relevance idea in a space without that inversion.
    - Count: ``round(budget * n)`` (at least 1), as every method here, where upstream floors
      ``int(n * k)``; ``adaptive=True`` uses upstream's IQR rule (then ``budget`` is ignored,
      at least one token is kept).
    - ``TextSim+`` (the mean of the dropped tokens appended as one token) is not implemented: the
      shared pruning hook selects tokens and adds none.
    - Positions and place as :mod:`~reference_impls.prefilling.divprune`: ``positions="keep"``
      (default) keeps the kept tokens' M-RoPE positions; ``layer=K`` scores the hidden states
      entering layer K instead of the LLM inputs. Several images are pooled and ranked jointly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, Positions, SingleLayerDrop, keep_top_visual
from reference_impls.registry import register

__all__ = ["TRIM", "question_relevance", "iqr_keep_fraction", "question_tokens"]


def question_relevance(visual: torch.Tensor, question: torch.Tensor, negate: bool = True) -> torch.Tensor:
    """TRIM's scores: softmax over the visual tokens of their dot product with the pooled question.

    Args:
        visual: (n, D) visual token features.
        question: (m, D) question token features (pooled by their mean) or (D,) one embedding.
        negate: negate the similarity before the softmax, as upstream's code does.

    Returns:
        (n,) scores summing to 1.
    """
    query = question.float().mean(0) if question.dim() == 2 else question.float()  # (D,)
    similarity = visual.float() @ query  # (n,)
    return (-similarity if negate else similarity).softmax(-1)


def iqr_keep_fraction(scores: torch.Tensor) -> float:
    """Share of ``scores`` above Q3 + 1.5 IQR (upstream's adaptive ``k == -1``)."""
    quartiles = torch.quantile(scores.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    upper = quartiles[1] + 1.5 * (quartiles[1] - quartiles[0])
    return float((scores.double() > upper).sum()) / scores.numel()


def question_tokens(text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the prompt text after the last visual token of each row (the question)."""
    index = torch.arange(visual.shape[1], device=visual.device).expand_as(visual)
    last_visual = torch.where(visual, index, -1).amax(-1, keepdim=True)  # (B, 1)
    return text & (index > last_visual)


@register("trim", family="prefilling-question-guided", kind="visual-token")
@dataclass
class TRIM(SingleLayerDrop):
    """TRIM configuration.

    Args:
        budget: fraction of visual tokens kept (0 < budget <= 1); ignored when ``adaptive``.
        negate: rank by the negated similarity, as upstream's code (default); False keeps the
            tokens most similar to the question.
        adaptive: keep the IQR-outlier share of the scores instead of ``budget`` (upstream ``k=-1``).
        layer: 0 selects among the embeddings entering the LLM (paper: before the LLM); K > 0 at layer K.
        positions: ``"keep"`` the original M-RoPE positions (default) or ``"renumber"`` them.
    """

    budget: float = 0.1
    negate: bool = True
    adaptive: bool = False
    layer: int = 0
    positions: Positions = "keep"
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def select(self, ctx: DropContext) -> torch.Tensor:
        question = question_tokens(ctx.text, ctx.visual)  # (B, n)
        if not bool(question.any(-1).all()):
            raise ValueError("TRIM needs question text after the last visual token in every row")
        scores = torch.zeros(ctx.visual.shape, device=ctx.hidden.device)  # (B, n)
        counts = []
        for b in range(ctx.hidden.shape[0]):
            row = question_relevance(ctx.hidden[b, ctx.visual[b]], ctx.hidden[b, question[b]], self.negate)
            scores[b, ctx.visual[b]] = row
            fraction = iqr_keep_fraction(row) if self.adaptive else self.budget
            counts.append(
                max(1, round(ctx.n_visual_in * fraction)) if self.adaptive else keep_count(ctx.n_visual_in, fraction)
            )
        # Rows must keep the same number of tokens (rectangular batch): the adaptive mode takes the largest count.
        return keep_top_visual(scores, ctx.visual, max(counts))
