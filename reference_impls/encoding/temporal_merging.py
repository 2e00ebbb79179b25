"""**Temporal token pooling and merging: fewer visual tokens for clips whose frames repeat.**

Neighbouring video frames mostly show the same thing: a static background is encoded again in
every frame, while only the moving or changing objects carry new information. Video encoders
for language models therefore compress along time before the language model. Video-ChatGPT
averages frame features over time (next to a spatial average); the long-video line of work
(arXiv 2503.04130) pools tokens of consecutive frames; TempMe merges temporally redundant tokens
of neighbouring frames by similarity. We implement two training-free forms on the merged visual
tokens, with a spatial position's token compared only with the same position in other frames:

- ``mode="pool"``: average the tokens of each spatial position over groups of ``window``
  consecutive frames (:func:`temporal_pool`);
- ``mode="merge"``: per spatial position, greedily merge the most similar pair of adjacent
  *runs* of frames (cosine similarity of their current tokens) until the budget is met, so a
  static background collapses into one token while a token that changes stays separate
  (:func:`temporal_merge`). ``reduce="mean"`` gives a run the size-weighted mean of its
  tokens (ToMe-style), ``reduce="drop"`` keeps the run's first token and drops the rest.

Papers (the family, none reproduced): arXiv 2306.05424 (Video-ChatGPT), arXiv 2409.01156
(TempMe), arXiv 2503.04130 (Token-Efficient Long Video Understanding for Multimodal LLMs).

Upstream: none public for the default ``mode="merge"`` (our reconstruction, no parity test).
``mode="pool"`` with ``window`` = the clip length computes Video-ChatGPT's "spatial tokens" (the
mean over frames of every position), mbzuai-oryx/Video-ChatGPT ``video_chatgpt/inference.py``
(``get_spatio_temporal_features_torch``) @ 69ea1db32aa8a6406620e615f227754f0f967c08, checked in
``tests/encoding/test_parity.py``; Video-ChatGPT's other half, one spatial-mean token per frame,
is not produced.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.temporal_merging import temporal_merge, temporal_pool
    >>> frames = torch.randn(4, 3, 8)        # (T, N, D): 4 frames of 3 tokens
    >>> frames[1] = frames[0]                # frame 1 repeats frame 0
    >>> _, size, rep = temporal_merge(frames, keep=9)
    >>> rep.tolist(), size.tolist()          # frame 1 (tokens 3-5) went into frame 0 first
    ([0, 1, 2, 6, 7, 8, 9, 10, 11], [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    >>> pooled, rep = temporal_pool(frames, window=2)
    >>> pooled.shape, rep.tolist()
    (torch.Size([6, 8]), [0, 1, 2, 6, 7, 8])

    With a model: ``with TemporalMerging(budget=0.25)(model): model.generate(**inputs)`` keeps
    a quarter of every video's tokens, and of the tokens of every run of same-size images of a
    prompt, which count as the frames of one clip unless ``images_as_frames=False``.

Deviations / guesses:
    - Training-free and after the vision tower: the papers train their models with the
      compression in place (Video-ChatGPT, the long-video paper) or merge inside the encoder
      (TempMe, for retrieval); we compress the post-merger tokens of a model trained without
      it. The vision tower still encodes every frame: only the language model's input shrinks.
    - Purely temporal: a token only meets the same spatial cell of other frames (no spatial
      pooling or merging), so one token per cell and clip is the floor: budgets below
      ``1 / frames`` keep ``1 / frames``.
    - Merging schedule (ours): exact greedy agglomeration of adjacent runs, one merge at a
      time, the most similar pair first (ties: earliest frame, then raster order); similarity
      is the cosine of the runs' current tokens (the mean, or the first token with ``drop``).
      Proportional attention (log-size bias) is not applied in the language model.
    - Pool windows: ``window = round(1 / budget)`` frames (capped at the clip length) unless
      set; a last, shorter group is pooled as it is, so the count matches the budget only when
      the window divides the frames.
    - Positions (our choice): a pooled or merged token takes the 3-D M-RoPE position of its
      *earliest* frame, so it stays on the original grid and keeps its cell's (h, w) ids.
    - A "frame" of a Qwen video item is one temporal slice (``temporal_patch_size`` = 2 raw
      frames fused by the patch embedding). With ``images_as_frames``, each maximal run of
      consecutive images of a prompt with the same grid is one clip; a lone image is kept whole.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reference_impls.common.visual_tokens import Selection, VisualContext, keep_count
from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.registry import register

__all__ = ["temporal_pool", "temporal_merge", "TemporalMerging"]


def temporal_pool(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every spatial position over groups of ``window`` consecutive frames.

    Args:
        x: ``(T, N, D)`` tokens of one clip, frame by frame, raster order within a frame.
        window: frames per group, ``>= 1`` (the last group may be shorter).

    Returns:
        ``(ceil(T/window)*N, D)`` pooled tokens and their representative indices into the
        ``T*N`` tokens (the group's first frame), ascending.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    t, n, _ = x.shape
    firsts = torch.arange(0, t, window, device=x.device)  # (G,)
    pooled = torch.stack([x[f : f + window].float().mean(dim=0) for f in firsts.tolist()])  # (G, N, D)
    rep = (firsts[:, None] * n + torch.arange(n, device=x.device)).reshape(-1)
    return pooled.reshape(-1, x.shape[-1]).to(x.dtype), rep


def temporal_merge(x: torch.Tensor, keep: int, reduce: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge adjacent frames' tokens of the same spatial position, most similar first, down to ``keep``.

    Every (frame, position) token starts as a run of one frame. Each step merges, over the
    whole clip, the pair of adjacent runs at one position whose current tokens have the
    highest cosine similarity (ties: earliest frame, then raster order); ``reduce="mean"``
    makes the merged token the size-weighted mean, ``"drop"`` keeps the earlier run's token.

    Args:
        x: ``(T, N, D)`` tokens of one clip.
        keep: tokens to keep, ``N <= keep <= T*N`` (one run per position at least).
        reduce: ``"mean"`` or ``"drop"``.

    Returns:
        ``(keep, D)`` tokens, their sizes ``(keep,)`` (frames merged, summing to ``T*N``) and
        representative indices ``(keep,)`` into the ``T*N`` tokens (each run's first frame),
        ascending.
    """
    t, n, d = x.shape
    if not n <= keep <= t * n:
        raise ValueError(f"keep must be in [{n}, {t * n}], got {keep}")
    if reduce not in ("mean", "drop"):
        raise ValueError(f"unknown reduce {reduce!r}")
    # Merges at one position never change the similarities at another, so the clip-wide greedy
    # order is a k-way merge of each position's own greedy sequence, taken head by head.
    frames, similarities = _merge_sequences(x.float(), reduce)  # (N, T-1) each
    heads = [(-similarities[p][0], frames[p][0], p) for p in range(n)] if t > 1 else []
    heapq.heapify(heads)
    merges = [0] * n
    for _ in range(t * n - keep):
        _, _, p = heapq.heappop(heads)
        merges[p] += 1
        if merges[p] < t - 1:
            heapq.heappush(heads, (-similarities[p][merges[p]], frames[p][merges[p]], p))
    start = torch.ones(t, n, dtype=torch.bool, device=x.device)  # (T, N) frame f starts a run at p
    for p, count in enumerate(merges):
        start[frames[p][:count], p] = False
    run = (start.cumsum(dim=0) - 1)[..., None].expand(-1, -1, d)  # (T, N, D) run index of each token
    total = torch.zeros(t, n, d, device=x.device).scatter_add_(0, run, x.float())
    size = torch.zeros(t, n, device=x.device).scatter_add_(0, run[..., 0], torch.ones(t, n, device=x.device))
    f, p = start.nonzero(as_tuple=True)  # frame-major, so the representatives come out ascending
    r = run[f, p, 0]
    kept = total[r, p] / size[r, p, None] if reduce == "mean" else x[f, p].float()
    return kept.to(x.dtype), size[r, p], f * n + p


def _merge_sequences(x: torch.Tensor, reduce: str) -> tuple[list[list[int]], list[list[float]]]:
    """Per position, the greedy merge sequence: ``T-1`` merges, each as (frame whose run joins
    the run before it, similarity at that moment); all positions advance together."""
    t, n, _ = x.shape
    total, size = x.clone(), torch.ones(t, n, 1, device=x.device)  # valid at a run's first frame
    start = torch.ones(t, n, dtype=torch.bool, device=x.device)
    index = torch.arange(t, device=x.device)[:, None].expand(t, n)
    columns = torch.arange(n, device=x.device)
    frames, similarities = [], []
    for _ in range(t - 1):
        token = total / size if reduce == "mean" else total  # (T, N, D)
        latest = torch.where(start, index, 0).cummax(dim=0).values  # (T, N) last run start <= f
        before = torch.cat([latest[:1], latest[:-1]])  # (T, N) last run start < f
        sim = F.cosine_similarity(token, token.gather(0, before[..., None].expand_as(token)), dim=-1)
        sim = sim.masked_fill(~start | (index == 0), -torch.inf)
        f = sim.argmax(dim=0)  # (N,) first maximum: earliest frame
        g = before[f, columns]
        if reduce == "mean":
            total[g, columns] += total[f, columns]
        size[g, columns] += size[f, columns]
        start[f, columns] = False
        frames.append(f)
        similarities.append(sim[f, columns])
    if not frames:
        return [[] for _ in range(n)], [[] for _ in range(n)]
    return torch.stack(frames, 1).tolist(), torch.stack(similarities, 1).tolist()


@register("temporal-merging", family="vision-encoders-video", kind="visual-token")
@dataclass
class TemporalMerging(EncodingMethod):
    """Temporal pooling or similarity-based temporal merging of every clip's visual tokens.

    Attributes:
        mode: ``"merge"`` (:func:`temporal_merge`) or ``"pool"`` (:func:`temporal_pool`).
        reduce: for ``"merge"``: ``"mean"`` (size-weighted mean) or ``"drop"`` (keep the first).
        window: for ``"pool"``: frames per group; 0 derives it from the budget.
        images_as_frames: treat each run of consecutive same-grid images of a prompt as the
            frames of one clip (ToyVLM's and many pipelines' way to feed a clip).
    """

    mode: str = "merge"
    reduce: str = "mean"
    window: int = 0
    images_as_frames: bool = True
    _image_results: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def reduce_clip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (K, D), rep (K,))`` for one clip's tokens ``x (T, N, D)`` at this budget."""
        t, n, d = x.shape
        if self.mode == "pool":
            window = self.window or max(1, round(1 / self.budget))
            if min(window, t) == 1:
                return x.reshape(t * n, d), torch.arange(t * n, device=x.device)
            return temporal_pool(x, min(window, t))
        if self.mode != "merge":
            raise ValueError(f"unknown mode {self.mode!r}")
        features, _, rep = temporal_merge(x, max(n, keep_count(t * n, self.budget)), self.reduce)
        return features, rep

    def select(self, ctx: VisualContext) -> Selection:
        self._image_results = {}
        if self.images_as_frames and self.budget < 1.0:
            image_id, index = self._model.config.image_token_id, 0
            for b in range(ctx.input_ids.shape[0]):
                features, ids = ctx.features(b), ctx.input_ids[b][ctx.visual_positions(b)]
                images = [item for item in ctx.items[b] if int(ids[item[0]]) == image_id]
                for clip in _same_grid_runs(images):
                    _, _, h, w = clip[0]
                    frames = torch.stack([features[start : start + h * w] for start, *_ in clip])  # (T, N, D)
                    merged, rep = self.reduce_clip(frames)
                    frame = rep // (h * w)
                    for f in range(len(clip)):
                        self._image_results[index + f] = (merged[frame == f], rep[frame == f] % (h * w))
                    index += len(clip)
        return super().select(ctx)

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        t, h, w = item.grid
        if self.budget >= 1.0:
            return keep_all(item)
        if item.modality == "image":
            return self._image_results.get(item.index) or keep_all(item)
        if t == 1:
            return keep_all(item)
        return self.reduce_clip(item.features.reshape(t, h * w, -1))


def _same_grid_runs(items: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """Consecutive items with equal ``(t, h, w)`` grouped; lone items form a run of one."""
    runs: list[list[tuple[int, int, int, int]]] = []
    for item in items:
        if runs and runs[-1][-1][1:] == item[1:]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs
