"""``pipeline(...)`` and ``python -m reference_impls run`` on a tiny checkpoint saved to a temporary folder."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from reference_impls.__main__ import main
from reference_impls.pipeline import (
    format_report,
    load_local,
    pipeline,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def image():
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(40, 56, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_loads_offline(checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load_local(checkpoint)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.image_token == "<image>"


def test_kv_method_keeps_fewer_bytes(checkpoint, image):
    reports = pipeline(checkpoint, "snapkv", budget=0.25, image=image, question="what is it?", max_new_tokens=4)
    full, method = reports["unmodified"], reports["method"]
    assert len(full.tokens) == len(method.tokens) == 4
    assert method.resident_kv_bytes < full.resident_kv_bytes
    assert full.visual_in == full.visual_kept == 16
    assert full.prefill_seconds > 0 and full.decode_seconds > 0


def test_noop_budget_gives_the_unmodified_answer(checkpoint, image):
    reports = pipeline(
        checkpoint, "fastv", budget=1.0, options={"layer": 1}, image=image, question="what?", max_new_tokens=4
    )
    assert reports["method"].tokens == reports["unmodified"].tokens
    assert reports["method"].answer == reports["unmodified"].answer


def test_visual_token_method_reports_kept_tokens(checkpoint, image):
    model, processor = load_local(checkpoint)
    reports = pipeline(
        model,
        "fastv",
        budget=0.25,
        options={"layer": 1},
        processor=processor,
        image=image,
        question="what?",
        max_new_tokens=3,
    )
    assert (reports["method"].visual_in, reports["method"].visual_kept) == (16, 4)
    assert reports["method"].resident_kv_bytes < reports["unmodified"].resident_kv_bytes
    table = format_report(reports, "fastv")
    assert "visual tokens kept" in table and "4/16" in table


def test_cli_runs_and_refuses(checkpoint, image, tmp_path, capsys):
    path = tmp_path / "a.png"
    image.save(path)
    argv = [
        "run",
        "--model",
        str(checkpoint),
        "--image",
        str(path),
        "--question",
        "what is it?",
        "--max-new-tokens",
        "3",
    ]
    assert main(argv + ["--method", "snapkv", "--budget", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "snapkv (budget 0.2)" in out and "resident KV (bytes)" in out
    assert main(argv + ["--method", "tome", "--budget", "0.5"]) == 2
    assert "refused: encoding-stage token selection" in capsys.readouterr().err
