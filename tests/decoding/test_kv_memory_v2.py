"""The KV memory benchmark on ToyVLM v2's own weights and a real suite prompt (tiny random-init v2 bundle)."""

import json

import torch

from reference_impls.bench import kv_memory
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2


def test_kv_memory_runs_on_a_v2_suite_prompt(tmp_path):
    torch.set_num_threads(1)
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    bundle = tiny_toyvlm_v2(seed=5)
    save_toyvlm_v2(bundle, checkpoint, {"parameters": 1})
    inputs = kv_memory.chat_inputs(bundle, "short", seed=10)
    assert "pixel_values" not in inputs and inputs["mm_encoder_outputs"]  # the tower ran once, beforehand
    argv = ["--suite", "short", "--checkpoint", str(checkpoint), "--methods", "snapkv", "kivi", "--budget", "0.2"]
    kv_memory.main([*argv, "--steps", "4", "--repeats", "1", "--out", str(out)])
    assert [p.name for p in out.iterdir()] == ["kv-memory-toyvlm-v2-short.json"]
    results = json.loads((out / "kv-memory-toyvlm-v2-short.json").read_text())
    full, snapkv, kivi = results["rows"]
    prompt = bundle.collate(bundle.samples(1, 10, "short"))["input_ids"].shape[1]
    assert full["prompt_tokens"] == prompt > 1024 and "ToyVLM v2" in results["title"] and "seed 10" in results["notes"]
    assert full["token_agreement"] == 1.0 and full["memory_reduction"] == 1.0
    assert snapkv["memory_reduction"] > 2 and kivi["memory_reduction"] > 2  # 20% of the entries / 4-bit codes
    # the full row's greedy tokens are the model's own greedy continuation of the collated prompt
    with torch.no_grad():
        expected = bundle.model.generate(
            **bundle.collate(bundle.samples(1, 10, "short")), max_new_tokens=5, do_sample=False
        )
    state = kv_memory.prefill("full", bundle.model, inputs, 1.0)
    kv_memory.decode_round(state, bundle.model, 4, record=False)
    assert state["tokens"] == expected[0, prompt:].tolist()
