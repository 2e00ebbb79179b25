"""Tiny random-init Qwen2.5-VL models and matching inputs, built in code (no hub, CPU, < 1 s).

Tests of every method use these: the architecture, the cache and the M-RoPE positions are the
real Qwen2.5-VL ones, only the sizes are small. Visual spans are found from the token ids stored
in the config (:func:`visual_mask`), never from constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

__all__ = [
    "TinyIds",
    "qwen25vl_config",
    "tiny_qwen25vl_config",
    "tiny_qwen25vl",
    "tiny_inputs",
    "visual_mask",
    "visual_spans",
]


@dataclass(frozen=True)
class TinyIds:
    """Special token ids of the tiny configs (kept inside the small vocabulary)."""

    bos: int = 0
    eos: int = 1
    pad: int = 2
    vision_start: int = 3
    image: int = 4
    video: int = 5
    vision_end: int = 6
    first_text: int = 7
    """Ids from here up to ``vocab_size - 1`` are ordinary text tokens."""


IDS = TinyIds()


def qwen25vl_config(
    *,
    vocab_size: int,
    special_ids: dict[str, int],
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    mrope_section: list[int],
    vision_depth: int,
    vision_hidden: int,
    vision_intermediate: int,
    vision_heads: int = 4,
    window_size: int = 56,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config built in code; the one place both the test models and ToyVLM use.

    ``special_ids`` maps ``bos``, ``eos``, ``pad``, ``vision_start``, ``vision_end``, ``image`` and
    ``video`` to token ids. ``mrope_section`` splits the rotary half-dimension into (temporal,
    height, width) parts and must sum to ``hidden_size // num_heads // 2``.
    """
    ids = special_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": mrope_section},
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
            pad_token_id=ids["pad"],
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            out_hidden_size=hidden_size,
            num_heads=vision_heads,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=window_size,
            fullatt_block_indexes=[vision_depth - 1],
            in_channels=3,
        ),
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    config._attn_implementation = attn_implementation
    return config


def tiny_qwen25vl_config(
    *,
    vocab_size: int = 99,
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 37,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config small enough for unit tests (about 100k parameters by default)."""
    half = hidden_size // num_heads // 2
    return qwen25vl_config(
        vocab_size=vocab_size,
        special_ids={
            name: getattr(IDS, name) for name in ("bos", "eos", "pad", "vision_start", "vision_end", "image", "video")
        },
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        mrope_section=[half - 2 * (half // 4), half // 4, half // 4],
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
        vision_intermediate=vision_hidden,
        attn_implementation=attn_implementation,
    )


def tiny_qwen25vl(seed: int = 0, **config_kwargs) -> Qwen2_5_VLForConditionalGeneration:
    """A random-init tiny Qwen2.5-VL in eval mode, deterministic for a given ``seed``."""
    torch.manual_seed(seed)
    config = tiny_qwen25vl_config(**config_kwargs)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = IDS.pad
    model.generation_config.eos_token_id = IDS.eos
    return model.eval()


def tiny_inputs(
    model: Qwen2_5_VLForConditionalGeneration,
    *,
    grids: tuple[tuple[int, int], ...] = ((8, 8),),
    prompt_before: int = 5,
    prompt_after: int = 4,
    seed: int = 0,
    batch_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Random inputs with one image per entry of ``grids`` (patch grid ``(h, w)``, even numbers).

    Layout: ``prompt_before`` text tokens, then for each image ``<vision_start> <image>*n
    <vision_end>`` with ``n = h*w/4`` merged tokens, then ``prompt_after`` text tokens. Returns
    ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values`` and
    ``image_grid_thw`` as the processor would.
    """
    config = model.config
    vision = config.vision_config
    merge = vision.spatial_merge_size
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    generator = torch.Generator().manual_seed(seed)
    text_high = config.text_config.vocab_size

    def text(count: int) -> list[int]:
        return torch.randint(IDS.first_text, text_high, (count,), generator=generator).tolist()

    ids: list[int] = text(prompt_before)
    pixels, grid_thw = [], []
    for h, w in grids:
        if h % merge or w % merge:
            raise ValueError(f"grid {(h, w)} must be divisible by spatial_merge_size={merge}")
        ids += (
            [config.vision_start_token_id]
            + [config.image_token_id] * (h * w // merge**2)
            + [config.vision_end_token_id]
        )
        pixels.append(torch.randn(h * w, patch_dim, generator=generator))
        grid_thw.append([1, h, w])
    ids += text(prompt_after)
    input_ids = torch.tensor([ids] * batch_size)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": visual_mask(input_ids, config).long(),
        "pixel_values": torch.cat(pixels * batch_size),
        "image_grid_thw": torch.tensor(grid_thw * batch_size),
    }


def visual_mask(input_ids: torch.Tensor, config) -> torch.Tensor:
    """Boolean mask of image and video tokens, from the ids in ``config``. Shape of ``input_ids``."""
    from reference_impls.common.architectures import adapter_for

    return adapter_for(config).visual_mask(input_ids, config)


def visual_spans(input_ids: torch.Tensor, config) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of visual tokens in a 1-D ``input_ids`` (one per image/video)."""
    if input_ids.dim() != 1:
        raise ValueError("visual_spans expects the ids of one sequence (1-D)")
    mask = visual_mask(input_ids, config).tolist()
    spans, start = [], None
    for position, is_visual in enumerate(mask + [False]):
        if is_visual and start is None:
            start = position
        elif not is_visual and start is not None:
            spans.append((start, position))
            start = None
    return spans
