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
parameters). Training: ``python -m reference_impls.encoding.train_frame_scorer``.

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
    the best-scored half of every prompt's images (the committed scorer is ToyVLM's).

Deviations / guesses:
    - Frame-Voyager learns to query frame combinations ranked by the video LLM's own loss; we
      do not reproduce its architecture: ours is a separate 2.2k-parameter scorer on pixel
      thumbnails and mean word embeddings, and a combination's score is the *sum* of its
      frames' scores, so the best combination of ``k`` frames is simply the top-``k`` frames.
      Targets: for each combination size, the
      softmax over combinations of the model's log-probability of the correct answer
      (listwise cross-entropy, :func:`combination_loss`); sizes and temperature are ours.
    - The question embedding averages all text tokens of the prompt (vision and padding
      tokens excluded), then normalises it (layer norm without weights); no text encoder.
    - Thumbnails are ``thumb x thumb`` cell means (8 x 8: one value per 28 px ToyVLM cell).
      The plumbing (thumbnails before the tower, images of a prompt as the frames of a clip,
      budget rounding) is :class:`~reference_impls.encoding.keyframes.KeyframeSelection`'s;
      only the ranking differs. Ties go to the earlier frame.
    - Without a scorer fitting the model (question size = the model's hidden size), the
      method warns and uses an untrained scorer: it then ranks arbitrarily.
    - Training on a real Qwen2.5-VL (not run): load it from a local path, feed clips of a local
      video-QA set as videos (frames = temporal slices, ``item_thumbnails`` of
      ``pixel_values_videos``) or as images, compute the labels with
      :func:`~reference_impls.encoding.train_frame_scorer.subset_log_probs` (it only uses the
      visual-token plumbing, so it works on any Qwen2.5-VL), sample combinations instead of
      enumerating them for long clips, and build the scorer with ``question_dim`` = the
      model's hidden size (3584 for 7B). The script's data loader is ToyVLM-only.
"""

from __future__ import annotations

import itertools
import json
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
    "combination_loss",
    "save_frame_scorer",
    "load_frame_scorer",
    "LearnedKeyframeSelection",
    "CHECKPOINT_DIR",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "frame_scorer"


class FrameScorer(nn.Module):
    """Scores frames for a question: per-cell MLP on the thumbnail, linear query, log-sum-exp."""

    def __init__(self, question_dim: int, channels: int = 3, thumb: int = 8, hidden: int = 32, rank: int = 16):
        super().__init__()
        self.hparams = {
            "question_dim": question_dim,
            "channels": channels,
            "thumb": thumb,
            "hidden": hidden,
            "rank": rank,
        }
        self.question_dim, self.channels, self.thumb = question_dim, channels, thumb
        self.cell = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, rank))
        self.query = nn.Linear(question_dim, rank)

    def forward(self, frames: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """``frames (..., T, C*thumb*thumb)``, ``question (..., D)`` -> scores ``(..., T)``."""
        cells = frames.float().unflatten(-1, (self.channels, -1)).transpose(-1, -2)  # (..., T, N, C)
        keys = self.cell(cells)  # (..., T, N, R)
        query = self.query(question.float())  # (..., R)
        logits = (keys @ query[..., None, :, None]).squeeze(-1)  # (..., T, N)
        return torch.logsumexp(logits, dim=-1)


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


def combination_loss(
    scores: torch.Tensor, log_probs: dict[int, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """Listwise loss over frame combinations, averaged over sizes.

    Args:
        scores: ``(B, T)`` frame scores; a combination scores the sum of its frames' scores.
        log_probs: ``{size: (B, n_subsets)}`` the model's log-probability of the correct answer
            from each combination (order of :func:`frame_subsets`).
        temperature: target = ``softmax(log_probs / temperature)`` over combinations.
    """
    total = scores.new_zeros(())
    for size, target in log_probs.items():
        predicted = scores @ frame_subsets(scores.shape[-1], size).to(scores).T  # (B, n_subsets)
        weights = torch.softmax(target.to(scores) / temperature, dim=-1)
        total = total - (weights * torch.log_softmax(predicted, dim=-1)).sum(-1).mean()
    return total / max(1, len(log_probs))


def save_frame_scorer(scorer: FrameScorer, path: str | Path, manifest: dict | None = None) -> Path:
    """``scorer.safetensors`` and ``manifest.json`` (with the scorer's sizes) under ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in scorer.state_dict().items()}, str(path / "scorer.safetensors"))
    (path / "manifest.json").write_text(json.dumps({**(manifest or {}), "scorer": scorer.hparams}, indent=1) + "\n")
    return path


def load_frame_scorer(path: str | Path | None = None) -> FrameScorer:
    """Load a scorer saved by :func:`save_frame_scorer` (default: the committed ToyVLM one)."""
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
        scorer: a :class:`FrameScorer` for this model; None: the committed checkpoint (or
            ``checkpoint``) when it fits the model, else an untrained one (with a warning).
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
            try:
                scorer = load_frame_scorer(self.checkpoint)
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
