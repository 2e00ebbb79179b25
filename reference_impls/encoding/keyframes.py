"""Training-free keyframe selection: keep a diverse subset of a video's frames.

Long videos repeat themselves: neighbouring frames, and often distant ones, show nearly the same
content. Training-free keyframe selectors embed every frame cheaply and keep a subset that covers
the video, dropping frames that add little beyond those already kept. We implement the
plainest diversity rule, greedy max-min (farthest-point) selection: start from the first frame,
then repeatedly add the frame whose (Euclidean) distance to its nearest kept frame is largest. An exact
duplicate of a kept frame has distance 0 and is therefore the last to be added, i.e. the first
to be dropped. Selection runs on cheap thumbnails of the raw frames, so the vision tower encodes
only the kept frames (Qwen2.5-VL attends within a frame, so their features are unchanged).

Papers (the family, not reproduced): arXiv 2407.03104 (KeyVideoLLM), arXiv 2506.22139 (Q-Frame),
arXiv 2510.27280 (FOCUS), arXiv 2602.03615 (KTV).

Example:
    >>> import torch
    >>> from reference_impls.encoding.keyframes import select_keyframes
    >>> frames = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0]])
    >>> select_keyframes(frames, 3).tolist()
    [0, 2, 3]

Deviations / guesses:
    - The rule (greedy max-min on Euclidean distance, first frame as seed) is our generic
      reconstruction of the family's similarity/diversity idea, not the algorithm of one of the
      papers above: KeyVideoLLM and Q-Frame rank frames by text-frame relevance with a
      retrieval model, which we do not have.
    - A "frame" is one temporal slice of Qwen2.5-VL's video grid, i.e. ``temporal_patch_size``
      (2) raw frames fused by the patch embedding.
    - Frame embedding: the frame's pixels average-pooled to a ``thumb x thumb`` thumbnail per
      channel (default 4x4), flattened; ``embed="features"`` uses the L2-normalised mean
      post-merger feature of the frame instead (the tower then encodes every frame, so it
      saves language-model cost only).
    - Kept frames keep their original 3-D positions (their temporal ids included), so the
      language model still sees the time gaps.
    - Images pass through unchanged; the budget applies per video: ``ceil(budget * t)`` frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["select_keyframes", "frame_thumbnails"]


def select_keyframes(embeddings: torch.Tensor, keep: int) -> torch.Tensor:
    """Greedy max-min selection of ``keep`` frames.

    Args:
        embeddings: ``(T, D)`` one embedding per frame.
        keep: number of frames to keep, ``1 <= keep <= T``.

    Returns:
        ``(keep,)`` kept frame indices, ascending. Frame 0 is always kept; ties go to the
        earlier frame.
    """
    t = embeddings.shape[0]
    if not 1 <= keep <= t:
        raise ValueError(f"keep must be in [1, {t}], got {keep}")
    e = embeddings.float()
    distance = torch.cdist(e, e)  # (T, T)
    chosen = [0]
    nearest = distance[0].clone()  # distance of every frame to its nearest kept frame
    nearest[0] = -1.0
    for _ in range(keep - 1):
        best = int(nearest.argmax())  # argmax returns the first maximum: earlier frame wins ties
        chosen.append(best)
        nearest = torch.minimum(nearest, distance[best])
        nearest[chosen] = -1.0
    return torch.tensor(sorted(chosen), dtype=torch.long, device=embeddings.device)


def frame_thumbnails(
    pixel_rows: torch.Tensor, grid: tuple[int, int, int], channels: int, merge: int = 2, thumb: int = 4
) -> torch.Tensor:
    """Cheap frame embeddings from one video's ``pixel_values_videos`` rows.

    Args:
        pixel_rows: ``(t*h*w, C*tp*p*p)`` rows of one video in the processor's layout.
        grid: ``(t, h, w)`` in patch units.
        channels: ``C`` (``vision_config.in_channels``).
        merge: ``vision_config.spatial_merge_size``.
        thumb: thumbnail side.

    Returns:
        ``(t, C*thumb*thumb)`` per-frame thumbnails.
    """
    t, h, w = grid
    rows = pixel_rows.float().view(t, h * w, channels, -1).mean(dim=-1)  # (t, h*w, C): mean colour of each patch
    # rows come in merge x merge blocks, the blocks in raster order: average each block, which
    # gives the (h/merge, w/merge) grid a coarse thumbnail needs
    blocks = rows.view(t, h // merge, w // merge, merge * merge, channels).mean(dim=3)  # (t, h', w', C)
    return F.adaptive_avg_pool2d(blocks.permute(0, 3, 1, 2), (thumb, thumb)).reshape(t, -1)
