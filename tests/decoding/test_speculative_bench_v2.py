"""The speculative-decoding benchmark on ToyVLM v2: long replies decoded until <eos>."""

import json

import pytest
import torch

from reference_impls.bench import speculative
from reference_impls.common.chat_scenes import IMAGE_LONG_KINDS, ChatSceneSpec, make_chat_samples
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2


@pytest.fixture(scope="module")
def setting():
    torch.set_num_threads(1)
    bundle = tiny_toyvlm_v2(seed=5)  # a seed whose random replies differ from sample to sample
    samples = make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_LONG_KINDS, 2, 4)
    return bundle, samples, speculative.chat_setting(bundle, samples, "tiny")


def test_strict_drafts_reproduce_greedy_and_exact_match_scores_whole_replies(setting):
    bundle, samples, chat = setting
    rows = {row["method"]: row for row in speculative.run(chat, max_new_tokens=6, label="long")}
    assert "early-exit 1/4 layers 10% visual" in rows  # the v2 quarter-cost draft
    for name, (_, verification, _) in speculative.methods(chat).items():
        if verification == "strict":
            assert rows[name]["identical"] == 100.0 and rows[name]["token_agreement"] == 100.0, name
    assert rows["greedy"]["accuracy"] == 0.0  # a random model does not produce the answers
    greedy = [speculative.greedy_decode(chat.model, inputs, 6).tokens for inputs in chat.inputs]
    assert [[bundle.vocab.words[t] for t in tokens] for tokens in greedy] == bundle.generate(samples, max_new_tokens=6)
    scored = speculative.Setting(**{**vars(chat), "replies": greedy})  # pretend the greedy replies are the answers
    assert speculative.run(scored, max_new_tokens=6, label="long")[0]["accuracy"] == 100.0
    truncated = speculative.Setting(**{**vars(chat), "replies": [reply[:-1] for reply in greedy]})
    assert speculative.run(truncated, max_new_tokens=6, label="long")[0]["accuracy"] == 0.0


def test_draft_cost_is_a_ratio_of_forward_times(setting):
    *_, chat = setting
    named = speculative.methods(chat)
    ratio = speculative.draft_cost(named["self 25% visual"][2], chat.model, chat.inputs[0], repeats=3)
    assert 0.05 < ratio < 20  # two timed forwards of the same network: comparable


def test_command_line_runs_a_v2_suite(tmp_path):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "long", "--checkpoint", str(checkpoint), "-n", "1", "--seeds", "2", "3", "--out", str(out)]
    speculative.main([*argv, "--max-new-tokens", "5"])
    assert sorted(p.name for p in out.iterdir()) == [
        "speculative-toyvlm-v2-long-tests.json",
        "speculative-toyvlm-v2-long.json",
    ]
    results = json.loads((out / "speculative-toyvlm-v2-long.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert rows["greedy"]["draft_cost"] == 1.0 and rows["greedy"]["setting"] == "long"
    assert all(row["draft_cost"] > 0 and row["seeds"] == 2 for row in rows.values())
    assert rows["self 25% visual"]["identical"] == 100.0
    tests = json.loads((out / "speculative-toyvlm-v2-long-tests.json").read_text())["rows"]
    assert {t["metric"].split(",")[0] for t in tests} == {"speedup", "decode_speedup", "mean_accepted_length"}
