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

Upstream: none followed: greedy max-min is our generic reconstruction (see Deviations), so there is
no parity test; ``tests/encoding/test_pure.py`` checks the rule on constructed frames.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.keyframes import select_keyframes
    >>> frames = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0]])
    >>> select_keyframes(frames, 3).tolist()
    [0, 2, 3]

    With a model: ``with KeyframeSelection(budget=0.5)(model): model.generate(**inputs)`` keeps
    half of every video's frames and half of the images of every prompt (the images of a prompt
    count as the frames of one clip unless ``images_as_frames=False``).

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
    - The budget applies per video: ``keep_count(t, budget)`` frames (round, at least one),
      and, with ``images_as_frames`` (default), per prompt to its images: ``keep_count(images,
      budget)`` images survive whole, the others lose all their tokens. Images are chosen
      before the tower too, which then encodes only the kept ones, when the prompt's token ids
      are known (recorded from ``model(...)`` / ``model.generate(...)`` calls); otherwise all
      images are encoded and chosen afterwards.
    - Subclasses change only the ranking rule (:meth:`KeyframeSelection._choose`); the
      question-aware learned scorer of :mod:`reference_impls.encoding.learned_keyframes` is one.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reference_impls.common.visual_tokens import Selection, VisualContext, keep_count
from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.registry import register

__all__ = ["select_keyframes", "frame_thumbnails", "item_thumbnails", "KeyframeSelection"]


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


def item_thumbnails(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, vision_config, thumb: int = 4
) -> list[torch.Tensor]:
    """:func:`frame_thumbnails` of every item (image or video) of a batch.

    Args:
        pixel_values: ``(sum t*h*w, C*tp*p*p)`` rows of all items (``pixel_values`` or
            ``pixel_values_videos``).
        grid_thw: ``(items, 3)`` patch grids.
        vision_config: the model's ``config.vision_config``.
        thumb: thumbnail side.

    Returns:
        One ``(t, C*thumb*thumb)`` tensor per item (``t = 1`` for images).
    """
    sizes = grid_thw.prod(-1).tolist()
    return [
        frame_thumbnails(pixels, tuple(grid), vision_config.in_channels, vision_config.spatial_merge_size, thumb)
        for pixels, grid in zip(pixel_values.split(sizes), grid_thw.tolist())
    ]


def _item_rows(input_ids: torch.Tensor, token_id: int) -> list[int]:
    # batch row of every visual item (maximal run of ``token_id``), in the vision tower's order
    starts = (input_ids == token_id) & ~F.pad(input_ids == token_id, (1, 0))[:, :-1]  # (B, S)
    return [b for b, count in enumerate(starts.sum(-1).tolist()) for _ in range(count)]


def _frame_tokens(frames: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    # token indices (raster, frame-major) of the given frames, ascending
    return (frames[:, None] * tokens_per_frame + torch.arange(tokens_per_frame, device=frames.device)).reshape(-1)


@register("keyframes-maxmin", family="keyframe-selection-training-free", kind="visual-token")
@dataclass
class KeyframeSelection(EncodingMethod):
    """Greedy max-min keyframe selection for videos (and, optionally, multi-image clips).

    Attributes:
        embed: ``"thumbnail"`` (frames chosen from pixel thumbnails before the vision tower,
            which then encodes only the kept frames) or ``"features"`` (mean post-merger
            feature of each frame, after encoding every frame).
        thumb: thumbnail side for ``"thumbnail"``.
        images_as_frames: treat the images of each prompt as the frames of one clip (default:
            many pipelines, ToyVLM's included, feed a clip as separate images).
    """

    embed: str = "thumbnail"
    thumb: int = 4
    images_as_frames: bool = True
    _video_frames: list[torch.Tensor] = field(default_factory=list, init=False, repr=False, compare=False)
    _image_thumbs: list[torch.Tensor] = field(default_factory=list, init=False, repr=False, compare=False)
    _kept_images: set[int] | None = field(default=None, init=False, repr=False, compare=False)
    _prompt: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def _choose(self, frames: torch.Tensor, keep: int, prompt: torch.Tensor | None) -> torch.Tensor:
        """The ranking rule: ``(keep,)`` ascending indices of the frames to keep.

        Args:
            frames: ``(T, F)`` one embedding (thumbnail) per frame of one clip.
            keep: frames to keep, ``1 <= keep <= T``.
            prompt: ``(S,)`` token ids of the clip's sequence without padding, or None when
                unknown. Max-min ignores it; question-aware subclasses read the question here.
        """
        return select_keyframes(frames, keep)

    def _prompt_of(self, row: int | None) -> torch.Tensor | None:
        if self._prompt is None or row is None:
            return None
        ids, mask = self._prompt
        return ids[row][mask[row].bool()]

    def _rows(self, token_id: int, items: int) -> list[int | None]:
        # batch row of every item, from the recorded prompt (None when unknown or not matching)
        rows = _item_rows(self._prompt[0], token_id) if self._prompt is not None else []
        return rows if len(rows) == items else [None] * items

    def install(self, model, stack: ExitStack) -> None:
        if self.embed not in ("thumbnail", "features"):
            raise ValueError(f"unknown embed {self.embed!r}")
        inner = model.model
        config, vision = model.config, model.config.vision_config
        original_video, original_image, original_generate = (
            inner.get_video_features,
            inner.get_image_features,
            model.generate,
        )
        self._prompt, self._kept_images = None, None

        def remember(inputs: dict) -> None:
            # the prompt of the current call: choosing frames before the tower needs it
            visual = any(
                inputs.get(k) is not None for k in ("pixel_values", "pixel_values_videos", "mm_encoder_outputs")
            )
            ids = inputs.get("input_ids")
            if ids is None or not visual:
                self._prompt = None
                return
            mask = inputs.get("attention_mask")
            self._prompt = (ids, mask if mask is not None else torch.ones_like(ids))

        def generate(*args, **kwargs):
            remember(kwargs)  # generate() runs the tower before the first forward
            return original_generate(*args, **kwargs)

        def get_video_features(pixel_values_videos, video_grid_thw=None, **kwargs):
            # choose frames from thumbnails, encode only those, put them back at their place
            self._video_frames = []
            if self.embed != "thumbnail" or self.budget >= 1.0:
                return original_video(pixel_values_videos, video_grid_thw, **kwargs)
            thumbs = item_thumbnails(pixel_values_videos, video_grid_thw, vision, self.thumb)
            rows = self._rows(config.video_token_id, len(thumbs))
            self._video_frames = [
                self._choose(x, keep_count(x.shape[0], self.budget), self._prompt_of(b)) for x, b in zip(thumbs, rows)
            ]
            return _encode_kept(
                original_video,
                pixel_values_videos,
                video_grid_thw,
                self._video_frames,
                vision.spatial_merge_size,
                **kwargs,
            )

        def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
            # with the prompt known, choose the kept images here and encode only those;
            # otherwise encode all and choose in select()
            self._kept_images = None
            if self.budget >= 1.0:
                return original_image(pixel_values, image_grid_thw, **kwargs)
            self._image_thumbs = [x[0] for x in item_thumbnails(pixel_values, image_grid_thw, vision, self.thumb)]
            rows = self._rows(config.image_token_id, len(self._image_thumbs))
            if self.embed != "thumbnail" or None in rows:
                return original_image(pixel_values, image_grid_thw, **kwargs)
            self._kept_images = set()
            for b in dict.fromkeys(rows):
                indices = [i for i, row in enumerate(rows) if row == b]
                kept = self._choose(
                    torch.stack([self._image_thumbs[i] for i in indices]),
                    keep_count(len(indices), self.budget),
                    self._prompt_of(b),
                )
                self._kept_images |= {indices[i] for i in kept.tolist()}
            frames = [torch.zeros(int(i in self._kept_images), dtype=torch.long) for i in range(len(rows))]
            return _encode_kept(
                original_image, pixel_values, image_grid_thw, frames, vision.spatial_merge_size, **kwargs
            )

        handle = inner.register_forward_pre_hook(lambda module, args, kwargs: remember(kwargs), with_kwargs=True)
        stack.callback(handle.remove)
        model.generate = generate
        stack.callback(model.__dict__.pop, "generate", None)
        inner.get_video_features = get_video_features
        stack.callback(inner.__dict__.pop, "get_video_features", None)
        if self.images_as_frames:
            inner.get_image_features = get_image_features
            stack.callback(inner.__dict__.pop, "get_image_features", None)

    def select(self, ctx: VisualContext) -> Selection:
        if self.images_as_frames and self.budget < 1.0 and self._kept_images is None:
            self._kept_images = self._choose_encoded_images(ctx)
        return super().select(ctx)

    def _choose_encoded_images(self, ctx: VisualContext) -> set[int]:
        # images chosen after the tower (features, or prompt unknown when it ran)
        image_id, kept, first = self._model.config.image_token_id, set(), 0
        for b in range(ctx.input_ids.shape[0]):
            ids = ctx.input_ids[b][ctx.visual_positions(b)]
            items = [item for item in ctx.items[b] if int(ids[item[0]]) == image_id]
            if not items:
                continue
            indices = list(range(first, first + len(items)))
            first += len(items)
            if self.embed == "thumbnail":
                embeddings = torch.stack([self._image_thumbs[i] for i in indices])
            else:
                embeddings = torch.stack([_mean_feature(ctx, b, item) for item in items])
            chosen = self._choose(
                embeddings, keep_count(len(indices), self.budget), ctx.input_ids[b][ctx.attention_mask[b].bool()]
            )
            kept |= {indices[i] for i in chosen.tolist()}
        return kept

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.budget >= 1.0:
            return keep_all(item)
        t, h, w = item.grid
        if item.modality == "image":
            if not self.images_as_frames or item.index in self._kept_images:
                return keep_all(item)
            return None, torch.zeros(0, dtype=torch.long)
        if self.embed == "thumbnail":
            frames = self._video_frames[item.index]
        else:
            means = F.normalize(item.features.float().view(t, h * w, -1).mean(dim=1), dim=-1)  # (t, D)
            frames = select_keyframes(means, keep_count(t, self.budget))
        return None, _frame_tokens(frames.to(item.features.device), h * w)


def _encode_kept(
    encode, pixels: torch.Tensor, grid_thw: torch.Tensor, frames: list[torch.Tensor], merge: int, **kwargs
):
    # run the tower (``encode``) on the kept frames of every item only; dropped frames get zero
    # features, which the selection never reads
    sizes = grid_thw.prod(-1).tolist()
    rows, grids = [], []
    for item, (_, h, w), kept in zip(pixels.split(sizes), grid_thw.tolist(), frames):
        if kept.numel():
            rows.append(item[_frame_tokens(kept, h * w)])
            grids.append([kept.numel(), h, w])
    output = encode(torch.cat(rows), grid_thw.new_tensor(grids), **kwargs)
    encoded = iter(output.pooler_output)
    reference = output.pooler_output[0]
    full = []
    for (t, h, w), kept in zip(grid_thw.tolist(), frames):
        per_frame = h * w // merge**2
        placed = reference.new_zeros(t * per_frame, reference.shape[-1])  # (t*per_frame, D)
        if kept.numel():
            placed[_frame_tokens(kept.to(placed.device), per_frame)] = next(encoded)
        full.append(placed)
    output.pooler_output = tuple(full)
    return output


def _mean_feature(ctx: VisualContext, b: int, item: tuple[int, int, int, int]) -> torch.Tensor:
    start, t, h, w = item
    return F.normalize(ctx.features(b)[start : start + t * h * w].float().mean(dim=0), dim=-1)
