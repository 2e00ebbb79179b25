"""The keyframe-selection benchmark on ToyVLM v2's video and image suites, with a tiny random-init v2 bundle."""

import pytest
import torch

from reference_impls.bench import keyframes
from reference_impls.common import seeded
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.encoding.learned_keyframes import FrameScorer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return str(save_toyvlm_v2(tiny_toyvlm_v2(), tmp_path_factory.mktemp("toy"), {"parameters": 1}))


def test_keyframes_bench_runs_on_the_video_suite(checkpoint):
    results, tests = keyframes.run(
        n=2, budgets=(0.5,), seeds=seeded.Seeds((1, 2), (3,)), chunk=2, log=lambda *_: None, suite="video",
        checkpoint=checkpoint,
    )  # fmt: skip
    assert results.id == "keyframe-selection-toyvlm-v2-video"
    rows = {row["method"]: row for row in results.rows}
    assert set(rows) == {"full model", "keyframes-maxmin", "random-frames", "random-pruning"}  # no oracle on videos
    full, maxmin = rows["full model"], rows["keyframes-maxmin"]
    assert 8 <= full["frames"] <= 16 and maxmin["frames"] == pytest.approx(full["frames"] / 2, abs=0.5)
    for name in ("keyframes-maxmin", "random-frames", "random-pruning"):
        assert rows[name]["visual_tokens"] == pytest.approx(full["visual_tokens"] / 2, rel=0.1), name
    assert maxmin["encode_ms"] < full["encode_ms"] and rows["random-pruning"]["select_ms"] == 0.0
    assert {"acc_motion", "acc_events", "needle_accuracy", "reply_tokens"} <= set(full)
    assert {t["versus"] for t in tests} == {"random-frames", "random-pruning"}  # at the same budget


def test_keyframes_bench_keeps_whole_images_on_an_image_suite(checkpoint):
    results, _ = keyframes.run(
        n=1, budgets=(0.25,), seeds=seeded.Seeds((1,), (3,)), chunk=1, log=lambda *_: None, suite="short",
        checkpoint=checkpoint,
    )  # fmt: skip
    rows = {row["method"]: row for row in results.rows}
    assert rows["full model"]["visual_tokens"] == 1024 and rows["oracle-frames"]["frames"] == 4  # 4 of 16 images
    assert rows["keyframes-maxmin"]["visual_tokens"] == rows["oracle-frames"]["visual_tokens"] == 256


def test_keyframes_bench_runs_the_learned_scorer_and_tests_it_against_every_setting(checkpoint):
    torch.manual_seed(0)
    results, tests = keyframes.run(
        n=2, budgets=(0.5, 0.25), seeds=seeded.Seeds((1, 2), (3,)), chunk=2, log=lambda *_: None, suite="video",
        checkpoint=checkpoint, scorer=FrameScorer(32),
    )  # fmt: skip
    rows = {(row["method"], row["budget"]): row for row in results.rows}
    learned, maxmin = rows["keyframes-learned", 0.5], rows["keyframes-maxmin", 0.5]
    assert learned["family"] == "keyframe-selection-training-aware" and "learned scorer" in results.title
    assert learned["frames"] == maxmin["frames"] and learned["visual_tokens"] == maxmin["visual_tokens"]
    assert learned["encode_ms"] < rows["full model", 1.0]["encode_ms"] and learned["select_ms"] > 0
    pairs = {(t["method"], t["versus"], t["budget"]) for t in tests}
    for budget in (0.5, 0.25):
        for other in ("keyframes-maxmin", "random-frames", "random-pruning"):
            assert ("keyframes-learned", other, budget) in pairs
    assert "keyframe-selection-training-aware" in results.families and "given by the caller" in results.notes
