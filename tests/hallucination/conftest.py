"""Tiny random Qwen2.5-VL models and forget / grounded / retain batches for the trainer tests."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

torch.set_num_threads(1)


def make_batch(
    model, *, seed: int, batch_size: int = 2, span: tuple[int, int] = (-3, -1), pad: int = 0, score: float = 30.0
) -> dict:
    """Image + text batch; labels are the inputs, ``mask`` covers positions ``span`` of each row.

    The last ``pad`` positions of the second row are padding (attention off, mask off). Every row
    carries the CLIP-like ``score`` that EFUF's terms read.
    """
    rows = [
        tiny_inputs(model, grids=((4, 4),), prompt_before=3, prompt_after=6, seed=seed + i) for i in range(batch_size)
    ]
    batch = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    batch["labels"] = batch["input_ids"].clone()
    mask = torch.zeros_like(batch["input_ids"])
    length = mask.shape[1]
    mask[:, length + span[0] : length + span[1]] = 1
    if pad:
        batch["attention_mask"][-1, -pad:] = 0
        mask[-1, -pad:] = 0
    batch["mask"] = mask
    batch["scores"] = torch.full((batch_size,), score)
    return batch


@pytest.fixture
def model():
    return tiny_qwen25vl(seed=0)


@pytest.fixture
def batches(model):
    return {
        "forget": make_batch(model, seed=10, span=(-2, -1), score=18.0),
        "grounded": make_batch(model, seed=20, span=(-4, -2), score=36.0),
        "retain": make_batch(model, seed=30, span=(-6, 0)),
    }
