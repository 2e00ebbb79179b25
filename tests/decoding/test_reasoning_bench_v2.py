"""The confidence-gated answering benchmark on ToyVLM v2: whole replies decoded until <eos>."""

import json

import torch

from reference_impls.bench import reasoning
from reference_impls.bench.speculative import Setting, chat_setting
from reference_impls.common.chat_scenes import IMAGE_LONG_KINDS, ChatSceneSpec, make_chat_samples
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.decoding.speculative import greedy_decode


def test_whole_replies_are_scored_and_escalation_reproduces_the_baseline():
    torch.set_num_threads(1)
    bundle = tiny_toyvlm_v2(seed=5)
    samples = make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_LONG_KINDS, 2, 4)
    chat = chat_setting(bundle, samples, "tiny")
    greedy = [greedy_decode(chat.model, inputs, 5).tokens for inputs in chat.inputs]
    scored = Setting(**{**vars(chat), "replies": greedy})  # pretend the greedy replies are the answers
    rows = reasoning.route(reasoning.collect(scored, escalations=("full-visual",), max_new=5))
    baseline = rows[0]
    assert baseline["method"] == reasoning.BASELINE and baseline["accuracy"] == 100.0
    always = next(r for r in rows if r["threshold"] == 1.01)  # always escalate: all visual tokens, greedy
    assert always["accuracy"] == 100.0 and always["escalated"] == 100.0
    truncated = Setting(**{**vars(chat), "replies": [reply[:-1] for reply in greedy]})
    assert reasoning.route(reasoning.collect(truncated, escalations=("full-visual",), max_new=5))[0]["accuracy"] == 0
    assert reasoning._right([7, 2], 7) and not reasoning._right([7, 2], [7])  # v1: first token; v2: whole reply


def test_command_line_runs_a_v2_suite(tmp_path):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "short", "--checkpoint", str(checkpoint), "-n", "1", "--seeds", "2", "3", "--out", str(out)]
    reasoning.main(argv)
    assert sorted(p.name for p in out.iterdir()) == [
        "reasoning-toyvlm-v2-short-tests.json",
        "reasoning-toyvlm-v2-short.json",
    ]
    results = json.loads((out / "reasoning-toyvlm-v2-short.json").read_text())
    assert (
        "exact match of the whole reply" in results["notes"] and "reasoning-toyvlm-v2-short-tests" in results["notes"]
    )
    assert results["seeds"] == {"tuning": [1], "reported": [2, 3]}
