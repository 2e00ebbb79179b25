"""The video-token benchmark on ToyVLM v2's video suite, with a tiny random-init v2 bundle."""

import json

import torch

from reference_impls.bench import video_tokens
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2


def test_video_tokens_bench_runs_on_the_v2_video_suite(tmp_path):
    torch.set_num_threads(1)
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "video", "--checkpoint", str(checkpoint), "--n", "1", "--seeds", "2", "4", "--budgets", "0.25"]
    video_tokens.main([*argv, "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "video-encoders-toyvlm-v2-video-tests.json",
        "video-encoders-toyvlm-v2-video.json",
    ]
    results = json.loads((out / "video-encoders-toyvlm-v2-video.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"none (all tokens)", *video_tokens.METHODS}
    full = rows["none (all tokens)"]["visual_tokens"]
    assert 1024 <= full <= 2048  # 16-32 frames of 8 x 16 merged tokens per two frames
    for name in video_tokens.METHODS:
        # about a quarter (temporal pooling rounds to whole groups of temporal slices)
        assert 0.15 * full <= rows[name]["visual_tokens"] <= 0.35 * full, name
        assert rows[name]["family"] == video_tokens.METHODS[name][0]
    assert {"needle_accuracy", "aggregation_accuracy", "reply_tokens", "decode_ms"} <= set(rows["temporal-pool"])
    tests = json.loads((out / "video-encoders-toyvlm-v2-video-tests.json").read_text())["rows"]
    assert {t["versus"] for t in tests} == set(video_tokens.METHODS) - {"random-pruning"}
