"""The attention-reuse benchmark on ToyVLM v2's suites, with a tiny random-init v2 bundle."""

import json

import torch

from reference_impls.bench import attention_reuse
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2


def test_patterns_of_a_six_layer_model():
    patterns = attention_reuse.chat_patterns(6)
    assert list(patterns) == [
        "none",
        *(f"{a}->{a + 1}" for a in range(5)),
        "0->1, 2->3, 4->5",
        "0->1,2,3,4,5",
    ]
    assert patterns["0->1, 2->3, 4->5"] == {1: 0, 3: 2, 5: 4} and patterns["0->1,2,3,4,5"] == dict.fromkeys(
        range(1, 6), 0
    )


def test_command_line_runs_a_v2_suite(tmp_path):
    torch.set_num_threads(1)
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "short", "--checkpoint", str(checkpoint), "--n", "1", "--seeds", "2", "3", "--out", str(out)]
    attention_reuse.main(argv)
    assert sorted(p.name for p in out.iterdir()) == [
        "attention-reuse-toyvlm-v2-short-tests.json",
        "attention-reuse-toyvlm-v2-short.json",
    ]
    rows = {r["variant"]: r for r in json.loads((out / "attention-reuse-toyvlm-v2-short.json").read_text())["rows"]}
    assert set(rows) == {"none", "0->1", "0->1, visual columns"}  # a 2-layer model has one pattern
    none, reuse, visual = rows["none"], rows["0->1"], rows["0->1, visual columns"]
    assert none["attn_saved"] == 0 and none["decode_accuracy"] == none["accuracy"]
    assert 0 < visual["attn_saved"] < reuse["attn_saved"] < 50  # one of two layers skips (some of) its scores
    assert none["prompt_tokens"] > 1024 and reuse["decode_ms"] > 0 and reuse["reply_tokens"] >= 1
    tests = json.loads((out / "attention-reuse-toyvlm-v2-short-tests.json").read_text())["rows"]
    assert {(t["metric"], t["versus"]) for t in tests} >= {("accuracy", "0->1"), ("decode_accuracy", "0->1")}
