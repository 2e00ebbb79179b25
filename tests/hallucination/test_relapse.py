"""The relapse diagnostics' relearning variants and method specs (tiny model, no captioner)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.hallucination.relapse import RelapseConfig, attack_variant, unlearned_model

from .conftest import make_batch


def _attack(step: int) -> dict:
    labels = torch.tensor([[5, 7, 9, 7], [7, 3, 3, 1]])
    return {"relearn": {"labels": labels, "input_ids": labels, "mask": torch.ones_like(labels)}}


def test_word_only_keeps_the_mask_on_the_word_and_nothing_else():
    batches, lr, trainable = attack_variant("word-only", _attack, word_id=7, config=RelapseConfig())
    batch = batches(0)["relearn"]
    assert batch["mask"].tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    assert torch.equal(batch["labels"], _attack(0)["relearn"]["labels"])
    assert lr == RelapseConfig().bench.relearn_lr and trainable is None


def test_protocols_set_learning_rate_and_trainable_set():
    config = RelapseConfig(small_lr=1e-6)
    batches, lr, trainable = attack_variant("bench", _attack, 7, config)
    assert batches is _attack and lr == config.bench.relearn_lr and trainable is None
    assert attack_variant("small-steps", _attack, 7, config)[1] == 1e-6
    trainable = attack_variant("language-only", _attack, 7, config)[2]
    assert trainable("model.language_model.layers.0.mlp.up_proj.weight")
    assert not trainable("model.visual.blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match="unknown relearning protocol 'lora'"):
        attack_variant("lora", _attack, 7, config)


def test_method_spec_replaces_the_learning_rate_and_leaves_the_base(model):
    batches = {
        "forget": make_batch(model, seed=10, span=(-2, -1), score=18.0),
        "grounded": make_batch(model, seed=20, span=(-4, -2), score=36.0),
        "retain": make_batch(model, seed=30, span=(-6, 0)),
    }
    config = RelapseConfig()
    config.bench.steps = 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, lr = unlearned_model("npo@1e-3", model, lambda step: batches, config, seed=0)
    assert lr == 1e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in unlearned.state_dict().items())
    assert unlearned_model("sare", model, lambda step: batches, config, seed=0)[1] == 5e-4
    same, lr = unlearned_model("base", model, lambda step: batches, config, seed=0)
    assert lr == 0.0 and all(torch.equal(before[k], v) for k, v in same.state_dict().items())
    with pytest.raises(ValueError, match="unknown method 'xyz'"):
        unlearned_model("xyz@1e-4", model, lambda step: batches, config, seed=0)
