"""The vision-tower FLOP model against torch's FLOP counter on real (random-init) towers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reference_impls.encoding.encoder_cost import (
    QWEN25VL_7B_VISION,
    VisionSize,
    build_vision_tower,
    vision_cost,
    vision_flops,
)
from reference_impls.registry import get_method

SMALL = VisionSize(hidden=64, depth=3, heads=4, intermediate=96, out_hidden=48, fullatt_blocks=(2,))


@pytest.mark.parametrize("full_attention", [False, True])
@pytest.mark.parametrize("grid", [(1, 16, 16), (1, 12, 20), (2, 8, 8)])
def test_flop_model_matches_the_flop_counter(full_attention, grid):
    tower = build_vision_tower(SMALL, full_attention)
    tower.config._attn_implementation = "eager"  # the counter sees eager matmuls, not fused sdpa
    pixels = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower(pixels, grid_thw=torch.tensor([grid]))
    assert counter.get_total_flops() == vision_flops(SMALL, grid, full_attention)["total"]


def test_windowed_attention_saves_attention_flops_only_beyond_one_window():
    one_window = (1, 8, 8)  # 112 px: the window covers the whole image
    assert vision_flops(SMALL, one_window) == vision_flops(SMALL, one_window, full_attention=True)
    big = (1, 96, 96)
    windowed, full = vision_flops(QWEN25VL_7B_VISION, big), vision_flops(QWEN25VL_7B_VISION, big, full_attention=True)
    assert full["attention"] > 5 * windowed["attention"] and full["mlp"] == windowed["mlp"]


def test_registered_analysis_rows():
    spec = get_method("vision-encoder-cost")
    assert spec.kind == "analysis" and spec.family == "vision-encoders-image"
    rows = vision_cost(SMALL, [112, 224], measure=True, repeats=1)
    assert [(row["resolution"], row["attention"]) for row in rows] == [
        (112, "windowed"),
        (112, "full"),
        (224, "windowed"),
        (224, "full"),
    ]
    assert all(row["seconds"] > 0 for row in rows) and rows[2]["tokens"] == 64
