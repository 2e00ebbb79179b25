"""Training-aware keyframe selection: a small learned, question-aware frame scorer.

**Frame-Voyager: Learning to query frames for video LLMs**

Instead of a fixed diversity rule, a tiny scorer ranks the frames of a clip for the question at
hand and the vision tower encodes only the top-ranked ones. Frame-Voyager's idea, which we
follow, is to supervise the scorer with the video LLM itself: for every training clip the
model answers from each combination of frames, and the combinations are ranked by how likely
the model finds the correct answer; the scorer learns to reproduce that ranking. Our scorer
sees cheap inputs only: a colour thumbnail of each raw frame (so frames are chosen before the
vision tower runs) and the mean of the model's frozen input word embeddings over the prompt's
text tokens. Each thumbnail cell goes through a small MLP, the question through a linear map,
and a frame's score is the log-sum-exp over its cells of their dot products (a few thousand
parameters). Training: ``python -m reference_impls.encoding.train_frame_scorer`` (ToyVLM) or
``... --target toyvlm-v2`` (ToyVLM v2: video slices and 16-image prompts, multi-token replies).

Paper: arXiv 2410.03226 (Frame-Voyager). Same family, not reproduced: "SeViLA: Self-chained
image-language model for video localization" and "M-LLM based video frame selection for
efficient video understanding".

Upstream: none public that we could read (no Frame-Voyager code in our index); the scorer and its
training are our reconstruction of the paper's supervision idea, so there is no parity test.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.learned_keyframes import FrameScorer, rank_frames
    >>> scorer = FrameScorer(question_dim=16, thumb=2)
    >>> frames, question = torch.randn(4, 3 * 2 * 2), torch.randn(16)   # 4 frames of one clip
    >>> scorer(frames, question).shape
    torch.Size([4])
    >>> rank_frames(scorer, frames, question, keep=2).numel()
    2

    With a model: ``with LearnedKeyframeSelection(budget=0.5)(model): model(**inputs)`` keeps
    the best-scored half of every prompt's images (or video's slices) with the committed scorer
    that fits the model: ToyVLM's (question size 96) or ToyVLM v2's (192).

Deviations / guesses:
    - Frame-Voyager learns to query frame combinations ranked by the video LLM's own loss; we
      do not reproduce its architecture: ours is a separate 2.2k-parameter scorer (4.0k for
      ToyVLM v2, with frame-index embeddings) on pixel thumbnails and mean word embeddings, and
      a combination's score is the *sum* of its frames' scores, so the best combination of
      ``k`` frames is simply the top-``k`` frames.
      Targets: for each combination size, the
      softmax over combinations of the model's log-probability of the correct answer
      (listwise cross-entropy, :func:`combination_loss`); sizes and temperature are ours.
      ToyVLM's answer is one token; ToyVLM v2's is a whole reply, so its log-probability is the
      teacher-forced sum over the reply's tokens, ``<eos>`` included.
    - ToyVLM's four frames allow every 1-, 2- and 3-frame combination; ToyVLM v2's 8-16 video
      slices or 16 images do not (up to 560 triples), so its labels use every single frame and
      16 random 2- and 3-frame combinations per clip (:func:`sample_subsets`, seeded), as the
      paper's combination sampling does in spirit; the count is ours.
    - ToyVLM v2's scorer (``positions=16``) also adds a learned embedding of the frame's index
      (dot product with the question's projection; frames past the last index share its
      embedding): v2's questions name images by number, which a thumbnail does not show.
      ToyVLM's scorer has none. Ours, not the paper's.
    - The question embedding averages all text tokens of the prompt (vision and padding
      tokens excluded), then normalises it (layer norm without weights); no text encoder.
    - Thumbnails are ``thumb x thumb`` cell means (8 x 8: one value per 28 px ToyVLM cell).
      The plumbing (thumbnails before the tower, images of a prompt as the frames of a clip,
      budget rounding) is :class:`~reference_impls.encoding.keyframes.KeyframeSelection`'s;
      only the ranking differs. Ties go to the earlier frame.
    - Without a scorer fitting the model (question size = the model's hidden size,
      :func:`fitting_checkpoint`), the method warns and uses an untrained scorer: it then ranks
      arbitrarily. One scorer serves a model's videos and multi-image prompts alike (ToyVLM v2's
      was trained on both).
    - Training on a real Qwen2.5-VL (not run): load it from a local path, feed clips of a local
      video-QA set as videos (frames = temporal slices, ``item_thumbnails`` of
      ``pixel_values_videos``) or as images, compute the labels with
      :func:`~reference_impls.encoding.train_frame_scorer.subset_log_probs` (it only uses the
      visual-token plumbing, so it works on any Qwen2.5-VL; pass the reply's token ids and
      combinations from :func:`sample_subsets`), and build the scorer with ``question_dim`` =
      the model's hidden size (3584 for 7B). The script's data loader is ToyVLM-only.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.encoding.keyframes import KeyframeSelection
from reference_impls.registry import register

__all__ = [
    "FrameScorer",
    "question_embedding",
    "rank_frames",
    "frame_subsets",
    "sample_subsets",
    "combination_loss",
    "save_frame_scorer",
    "load_frame_scorer",
    "LearnedKeyframeSelection",
    "CHECKPOINT_DIR",
    "CHECKPOINT_DIR_V2",
    "COMMITTED",
    "fitting_checkpoint",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "frame_scorer"
"""The scorer trained on ToyVLM (v1, question size 96)."""
CHECKPOINT_DIR_V2 = Path(__file__).resolve().parent / "checkpoints" / "frame_scorer_v2"
"""The scorer trained on ToyVLM v2 (question size 192)."""
COMMITTED = (CHECKPOINT_DIR, CHECKPOINT_DIR_V2)
"""Committed scorers, searched in this order for one that fits a model."""


class FrameScorer(nn.Module):
    """Scores frames for a question: per-cell MLP on the thumbnail, linear query, log-sum-exp."""

    def __init__(
        self,
        question_dim: int,
        channels: int = 3,
        thumb: int = 8,
        hidden: int = 32,
        rank: int = 16,
        positions: int = 0,
    ):
        super().__init__()
        self.hparams = {
            "question_dim": question_dim,
            "channels": channels,
            "thumb": thumb,
            "hidden": hidden,
            "rank": rank,
        } | ({"positions": positions} if positions else {})
        self.question_dim, self.channels, self.thumb = question_dim, channels, thumb
        self.cell = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, rank))
        self.query = nn.Linear(question_dim, rank)
        # ToyVLM v2's questions name images by number ("the circle in image 3"): a frame's index
        # is evidence its thumbnail does not show
        self.position = nn.Embedding(positions, rank) if positions else None

    def forward(self, frames: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """``frames (..., T, C*thumb*thumb)``, ``question (..., D)`` -> scores ``(..., T)``."""
        cells = frames.float().unflatten(-1, (self.channels, -1)).transpose(-1, -2)  # (..., T, N, C)
        keys = self.cell(cells)  # (..., T, N, R)
        query = self.query(question.float())  # (..., R)
        logits = (keys @ query[..., None, :, None]).squeeze(-1)  # (..., T, N)
        scores = torch.logsumexp(logits, dim=-1)  # (..., T)
        if self.position is not None:  # frames past the last learned index share its embedding
            index = torch.arange(frames.shape[-2], device=frames.device).clamp(max=self.position.num_embeddings - 1)
            scores = scores + (self.position(index) @ query[..., :, None]).squeeze(-1)  # (..., T)
        return scores


def question_embedding(
    embedding: nn.Embedding, prompt: torch.Tensor, skip: set[int] | tuple[int, ...] = ()
) -> torch.Tensor:
    """Mean frozen input embedding of the prompt's text tokens (ids in ``skip`` left out),
    layer-normalised without weights. ``prompt (S,)`` -> ``(D,)``."""
    ids = prompt[~torch.isin(prompt, torch.tensor(sorted(skip), dtype=prompt.dtype, device=prompt.device))]
    with torch.no_grad():
        mean = embedding(ids).float().mean(dim=0)  # (D,)
    return F.layer_norm(mean, mean.shape)


def rank_frames(scorer: FrameScorer, frames: torch.Tensor, question: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` best-scored frames, ascending ``(keep,)`` (ties: the earlier frame)."""
    if not 1 <= keep <= frames.shape[0]:
        raise ValueError(f"keep must be in [1, {frames.shape[0]}], got {keep}")
    with torch.no_grad():
        scores = scorer(frames, question)  # (T,)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep].sort().values.to(frames.device)


def frame_subsets(frames: int, size: int) -> torch.Tensor:
    """Membership matrix of all ``size``-frame combinations, in ``itertools.combinations``
    order. ``(n_subsets, frames)`` of 0/1 floats."""
    combos = list(itertools.combinations(range(frames), size))
    member = torch.zeros(len(combos), frames)
    for row, combo in enumerate(combos):
        member[row, list(combo)] = 1.0
    return member


def sample_subsets(frames: int, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Membership matrix of ``count`` distinct random ``size``-frame combinations (all of them,
    in :func:`frame_subsets` order, when there are at most ``count``). ``(n_subsets, frames)``."""
    if math.comb(frames, size) <= count:
        return frame_subsets(frames, size)
    combos: dict[tuple[int, ...], None] = {}
    while len(combos) < count:
        combos[tuple(sorted(torch.randperm(frames, generator=generator)[:size].tolist()))] = None
    member = torch.zeros(count, frames)
    for row, combo in enumerate(combos):
        member[row, list(combo)] = 1.0
    return member


def combination_loss(
    scores: torch.Tensor,
    log_probs: dict[int, torch.Tensor],
    temperature: float = 1.0,
    members: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Listwise loss over frame combinations, averaged over sizes.

    Args:
        scores: ``(B, T)`` frame scores; a combination scores the sum of its frames' scores.
        log_probs: ``{size: (B, n_subsets)}`` the model's log-probability of the correct answer
            from each combination (order of :func:`frame_subsets`, or of ``members``).
        temperature: target = ``softmax(log_probs / temperature)`` over combinations.
        members: ``{size: (B, n_subsets, T)}`` 0/1 membership of each clip's combinations
            (sampled ones, clips of different lengths padded); an all-zero row is padding and
            takes no part. None: every combination of the ``T`` frames.
    """
    total = scores.new_zeros(())
    for size, target in log_probs.items():
        if members is None:
            predicted = scores @ frame_subsets(scores.shape[-1], size).to(scores).T  # (B, n_subsets)
            weights = torch.softmax(target.to(scores) / temperature, dim=-1)
            total = total - (weights * torch.log_softmax(predicted, dim=-1)).sum(-1).mean()
            continue
        member = members[size].to(scores)  # (B, n_subsets, T)
        valid = member.any(-1)  # (B, n_subsets)
        predicted = (member @ scores[..., None]).squeeze(-1).masked_fill(~valid, -torch.inf)
        weights = torch.softmax(target.to(scores).masked_fill(~valid, -torch.inf) / temperature, dim=-1)
        cross = torch.where(valid, weights * torch.log_softmax(predicted, dim=-1), 0.0)
        total = total - cross.sum(-1).mean()
    return total / max(1, len(log_probs))


def save_frame_scorer(scorer: FrameScorer, path: str | Path, manifest: dict | None = None) -> Path:
    """``scorer.safetensors`` and ``manifest.json`` (with the scorer's sizes) under ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in scorer.state_dict().items()}, str(path / "scorer.safetensors"))
    (path / "manifest.json").write_text(json.dumps({**(manifest or {}), "scorer": scorer.hparams}, indent=1) + "\n")
    return path


def fitting_checkpoint(question_dim: int, channels: int = 3, thumb: int = 8) -> Path | None:
    """The first committed scorer (:data:`COMMITTED`) made for this question size (the model's
    hidden size), channel count and thumbnail side, or None."""
    for path in COMMITTED:
        if not (path / "manifest.json").exists():
            continue
        sizes = json.loads((path / "manifest.json").read_text())["scorer"]
        if (sizes["question_dim"], sizes["channels"], sizes["thumb"]) == (question_dim, channels, thumb):
            return path
    return None


def load_frame_scorer(path: str | Path | None = None) -> FrameScorer:
    """Load a scorer saved by :func:`save_frame_scorer` (default: the committed ToyVLM v1 one)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else CHECKPOINT_DIR
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(
            f"no frame scorer at {path} (train one: python -m reference_impls.encoding.train_frame_scorer)"
        )
    scorer = FrameScorer(**json.loads((path / "manifest.json").read_text())["scorer"])
    scorer.load_state_dict(load_file(str(path / "scorer.safetensors")))
    return scorer.eval()


@register("keyframes-learned", family="keyframe-selection-training-aware", kind="visual-token")
@dataclass
class LearnedKeyframeSelection(KeyframeSelection):
    """Keep the frames (images of a prompt, or slices of a video) a learned scorer ranks best.

    Attributes:
        scorer: a :class:`FrameScorer` for this model; None: ``checkpoint``, or else the
            committed scorer that fits the model (question size = its hidden size:
            :func:`fitting_checkpoint`, ToyVLM's or ToyVLM v2's), else an untrained one (with a warning).
        checkpoint: directory of a saved scorer, used when ``scorer`` is None.
        thumb: thumbnail side; must equal the scorer's.
    """

    thumb: int = 8
    scorer: FrameScorer | None = field(default=None, repr=False, compare=False)
    checkpoint: str | None = None
    _active: FrameScorer | None = field(default=None, init=False, repr=False, compare=False)
    _skip: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def install(self, model, stack: ExitStack) -> None:
        if self.embed != "thumbnail":
            raise ValueError("the learned scorer ranks thumbnails: embed must be 'thumbnail'")
        config, hidden = model.config, model.get_input_embeddings().embedding_dim
        scorer = self.scorer
        if scorer is None:
            path = self.checkpoint or fitting_checkpoint(hidden, config.vision_config.in_channels, self.thumb)
            try:
                scorer = load_frame_scorer(path) if path is not None else None
            except FileNotFoundError:
                scorer = None
            if scorer is None or scorer.question_dim != hidden or scorer.channels != config.vision_config.in_channels:
                warnings.warn(
                    "no trained frame scorer fits this model: using an untrained one (arbitrary ranking)", stacklevel=2
                )
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    scorer = FrameScorer(hidden, config.vision_config.in_channels, self.thumb)
        if scorer.thumb != self.thumb:
            raise ValueError(
                f"the scorer was trained on {scorer.thumb}x{scorer.thumb} thumbnails, the method makes {self.thumb}x{self.thumb}"
            )
        self._active = scorer.eval()
        pad = getattr(config.text_config, "pad_token_id", None)
        special = (
            config.vision_start_token_id,
            config.vision_end_token_id,
            config.image_token_id,
            config.video_token_id,
            pad,
        )
        self._skip = tuple(i for i in special if i is not None)
        super().install(model, stack)

    def _choose(self, frames: torch.Tensor, keep: int, prompt: torch.Tensor | None) -> torch.Tensor:
        if prompt is None:
            raise RuntimeError("the question is unknown: call the model with input_ids inside `with method(model):`")
        question = question_embedding(self._model.get_input_embeddings(), prompt, self._skip)
        return rank_frames(self._active, frames, question.to(frames.device), keep)
