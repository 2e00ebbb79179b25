"""Vision-encoder cost: windowed vs full attention in the Qwen2.5-VL vision tower (analysis).

A native-resolution ViT pays for self-attention quadratically in the number of patches, so at
high resolution the encoder, not the language model, can dominate the prefill. Qwen2.5-VL's
answer is windowed attention: most blocks attend only within windows of 112x112 pixels (8x8
patches), and only a few blocks (``fullatt_block_indexes``; 4 of 32 in the released models) attend
over the whole image. This module counts the floating-point operations of the tower for a given
image grid, with the released windowing or with full attention in every block, and measures the
CPU time of random-init towers of a few sizes, so the two curves can be compared.

Reproduced results: ``python -m reference_impls.encoding.encoder_cost`` writes
``vision-encoder-flops.json`` (7B sizes, analytic) and ``vision-encoder-cpu.json`` (small
random-init towers, measured).

Papers: arXiv 2502.13923 (Qwen2.5-VL, windowed attention), arXiv 2409.12191 (Qwen2-VL, native
resolution with full attention).

Upstream: none (an analysis, not a method: the towers measured are transformers' own
``Qwen2_5_VisionTransformerPretrainedModel`` and ``Qwen2VisionTransformerPretrainedModel``).

Examples:
    >>> from reference_impls.encoding.encoder_cost import QWEN25VL_7B_VISION, vision_flops
    >>> windowed = vision_flops(QWEN25VL_7B_VISION, (1, 96, 96))
    >>> full = vision_flops(QWEN25VL_7B_VISION, (1, 96, 96), full_attention=True)
    >>> full["attention"] > 5 * windowed["attention"]
    True

Deviations / guesses:
    - FLOPs are counted analytically (2 per multiply-accumulate) for the matrix products only:
      patch embedding, qkv/output projections, attention scores and weighted sums, the gated
      MLP and the merger; norms, rotary embeddings, softmax and GELU are left out.
    - ``QWEN25VL_7B_VISION`` copies the published vision-config sizes of Qwen2.5-VL-7B (hidden
      1280, depth 32, 16 heads, intermediate 3420, full-attention blocks 7/15/23/31); only the
      FLOP count uses it, never weights.
    - Timings come from random-init small towers on a shared 2-core CPU; they show the trend,
      not the cost of the real model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.vision_utils import get_vision_window_index

from reference_impls.registry import register

__all__ = [
    "VisionSize",
    "QWEN25VL_7B_VISION",
    "SMALL_TOWERS",
    "vision_flops",
    "build_vision_tower",
    "measure_vision_seconds",
    "vision_cost",
]


@dataclass(frozen=True)
class VisionSize:
    """The vision-config fields that set the tower's cost."""

    hidden: int
    depth: int
    heads: int
    intermediate: int
    out_hidden: int
    fullatt_blocks: tuple[int, ...]
    patch: int = 14
    merge: int = 2
    temporal: int = 2
    window: int = 112
    channels: int = 3


QWEN25VL_7B_VISION = VisionSize(
    hidden=1280, depth=32, heads=16, intermediate=3420, out_hidden=3584, fullatt_blocks=(7, 15, 23, 31)
)


def _segment_lengths(size: VisionSize, grid: tuple[int, int, int], full: bool) -> list[int]:
    t, h, w = grid
    if full:
        return [h * w] * t  # Qwen2.5-VL attends within a frame, never across frames
    _, cu = get_vision_window_index(torch.tensor([grid]), size.merge, size.window, size.patch)
    return (cu[1:] - cu[:-1]).tolist()


def vision_flops(size: VisionSize, grid: tuple[int, int, int], full_attention: bool = False) -> dict[str, float]:
    """FLOPs of one vision-tower forward over a ``(t, h, w)`` patch grid.

    Args:
        size: tower sizes.
        grid: ``(t, h, w)`` in patch units (``image_grid_thw`` of one item).
        full_attention: every block attends over the whole frame (otherwise only
            ``size.fullatt_blocks`` do and the others use windows).

    Returns:
        FLOPs per part: ``patch_embed``, ``projections``, ``attention``, ``mlp``, ``merger`` and
        their ``total``.
    """
    n = grid[0] * grid[1] * grid[2]
    d = size.hidden
    windows = _segment_lengths(size, grid, full=False)
    frames = _segment_lengths(size, grid, full=True)
    attention = 0.0
    for block in range(size.depth):
        segments = frames if full_attention or block in size.fullatt_blocks else windows
        attention += sum(4.0 * s * s * d for s in segments)  # QK^T and AV
    flops = {
        "patch_embed": 2.0 * n * size.channels * size.temporal * size.patch**2 * d,
        "projections": size.depth * 2.0 * n * (3 * d * d + d * d),
        "attention": attention,
        "mlp": size.depth * 2.0 * n * 3 * d * size.intermediate,
        "merger": 2.0 * (n / size.merge**2) * ((size.merge**2 * d) ** 2 + size.merge**2 * d * size.out_hidden),
    }
    flops["total"] = sum(flops.values())
    return flops


def build_vision_tower(
    size: VisionSize, full_attention: bool = False, seed: int = 0
) -> Qwen2_5_VisionTransformerPretrainedModel:
    """A random-init Qwen2.5-VL vision tower of ``size`` (sdpa attention, eval mode)."""
    blocks = list(range(size.depth)) if full_attention else list(size.fullatt_blocks)
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=size.depth,
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_heads=size.heads,
            out_hidden_size=size.out_hidden,
            patch_size=size.patch,
            spatial_merge_size=size.merge,
            temporal_patch_size=size.temporal,
            window_size=size.window,
            fullatt_block_indexes=blocks,
            in_channels=size.channels,
        ),
    ).vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(config).eval()


@torch.no_grad()
def measure_vision_seconds(tower, grid: tuple[int, int, int], repeats: int = 3) -> float:
    """Median wall-clock seconds of one forward of ``tower`` on random pixels of ``grid``."""
    config = tower.config
    pixels = torch.randn(
        grid[0] * grid[1] * grid[2], config.in_channels * config.temporal_patch_size * config.patch_size**2
    )
    grid_thw = torch.tensor([grid])
    tower(pixels, grid_thw=grid_thw)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tower(pixels, grid_thw=grid_thw)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@register("vision-encoder-cost", family="vision-encoders-image", kind="analysis")
def vision_cost(
    size: VisionSize, resolutions: list[int], *, measure: bool = True, repeats: int = 3
) -> list[dict[str, float | int | str]]:
    """FLOPs (and CPU seconds when ``measure``) of windowed vs full attention at square resolutions.

    Args:
        size: tower sizes.
        resolutions: image sides in pixels (multiples of ``patch * merge``).
        measure: also time random-init towers (slow for big sizes).
        repeats: timing repeats (the median is reported).

    Returns:
        One row per (resolution, attention): ``resolution``, ``attention`` ("windowed" or
        "full"), ``tokens`` (merged tokens), ``gflops``, ``attention_gflops`` and ``seconds``
        (NaN when not measured).
    """
    towers = {mode: build_vision_tower(size, mode == "full") for mode in ("windowed", "full")} if measure else {}
    rows = []
    for side in resolutions:
        cells = side // size.patch
        grid = (1, cells, cells)
        for mode in ("windowed", "full"):
            flops = vision_flops(size, grid, full_attention=mode == "full")
            rows.append(
                {
                    "resolution": side,
                    "attention": mode,
                    "tokens": cells * cells // size.merge**2,
                    "gflops": flops["total"] / 1e9,
                    "attention_gflops": flops["attention"] / 1e9,
                    "seconds": measure_vision_seconds(towers[mode], grid, repeats) if measure else float("nan"),
                }
            )
    return rows


SMALL_TOWERS = {
    "tiny (hidden 64, depth 4)": VisionSize(
        hidden=64, depth=4, heads=4, intermediate=128, out_hidden=64, fullatt_blocks=(3,)
    ),
    "small (hidden 128, depth 8)": VisionSize(
        hidden=128, depth=8, heads=8, intermediate=256, out_hidden=128, fullatt_blocks=(3, 7)
    ),
}


def main() -> None:
    """Write ``vision-encoder-flops.json`` (7B sizes, analytic) and ``vision-encoder-cpu.json``
    (random-init small towers, measured) to ``reference_impls/results/``."""
    from reference_impls.common.results import Column, Plot, Results, save_results

    torch.set_num_threads(1)
    columns = [
        Column("series", "Tower, attention"),
        Column("resolution", "Image side", "px", digits=0),
        Column("tokens", "Merged tokens", digits=0),
        Column("gflops", "Vision tower", "GFLOPs", digits=1),
        Column("attention_gflops", "of which attention", "GFLOPs", digits=1),
    ]
    flops_rows = [
        dict(row, series=f"Qwen2.5-VL-7B vision, {row['attention']}", seconds=None)
        for row in vision_cost(QWEN25VL_7B_VISION, [224, 448, 672, 896, 1120, 1344], measure=False)
    ]
    command = "python -m reference_impls.encoding.encoder_cost"
    print(
        save_results(
            Results(
                id="vision-encoder-flops",
                title="Qwen2.5-VL-7B vision tower: FLOPs vs resolution, windowed vs full attention",
                command=command,
                families=["vision-encoders-image"],
                columns=columns,
                rows=flops_rows,
                plots=[Plot(x="resolution", y="gflops", group="series", title="Vision-tower GFLOPs per image")],
                notes="Analytic count (2 FLOPs per multiply-accumulate of every matrix product; norms, rotary, softmax and "
                "activations left out) from the published vision-config sizes; the same formula equals torch's FLOP "
                "counter on random-init towers with eager attention (tests/encoding/test_encoder_cost.py).",
            )
        )
    )
    cpu_rows = []
    for name, size in SMALL_TOWERS.items():
        for row in vision_cost(size, [112, 224, 448, 672], repeats=3):
            cpu_rows.append(dict(row, series=f"{name}, {row['attention']}", ms=1000 * row["seconds"]))
    print(
        save_results(
            Results(
                id="vision-encoder-cpu",
                title="Random-init Qwen2.5-VL vision towers: CPU time vs resolution, windowed vs full attention",
                command=command,
                families=["vision-encoders-image"],
                columns=columns + [Column("ms", "CPU time", "ms", digits=1)],
                rows=cpu_rows,
                plots=[Plot(x="resolution", y="ms", group="series", title="Vision-tower CPU time per image")],
                notes="Median of 3 forwards (after one warm-up), 1 thread, sdpa attention, on a 2-core machine shared with "
                "other jobs: read the ratio of windowed to full within one tower, not the absolute times.",
            )
        )
    )
    for row in flops_rows + cpu_rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})


if __name__ == "__main__":
    main()
