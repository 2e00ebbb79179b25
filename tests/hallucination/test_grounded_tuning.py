"""Grounded instruction tuning trains on the balanced, truthful data only."""

from __future__ import annotations

import copy

import torch

from reference_impls.hallucination.captioner import CAPTION_PROMPT, CaptionWorld
from reference_impls.hallucination.grounded_tuning import GroundedInstructionTuning, balanced_scenes
from reference_impls.hallucination.train_captioner import load_captioner
from reference_impls.hallucination.trainer import UnlearningTrainer


def test_balanced_scenes_break_the_cooccurrence():
    world = CaptionWorld()
    natural = world.scenes(300, seed=5)
    balanced = balanced_scenes(world, 300, seed=5)
    rate = lambda scenes: sum(world.is_trigger(s.truth) for s in scenes) / sum(world.a in s.truth for s in scenes)
    # the natural draw has fewer A-without-B scenes (about 40%); balancing tops them up to half
    assert rate(natural) < 0.45 and abs(rate(balanced) - 0.5) < 0.03


def test_training_sees_only_balanced_truthful_batches(monkeypatch):
    model, vocab, world, _ = load_captioner()
    model = copy.deepcopy(model)
    seen = []
    step = UnlearningTrainer.step

    def record(self, batches):
        seen.append(batches)
        return step(self, batches)

    monkeypatch.setattr(UnlearningTrainer, "step", record)
    method = GroundedInstructionTuning(steps=3, batch=8, pool=100)
    before = copy.deepcopy(model.state_dict())
    method.train(model, method.batches(world, vocab, model.config, seed=0))
    assert len(seen) == 3 and all(set(b) == {"balanced"} for b in seen)
    for batches in seen:
        batch = batches["balanced"]
        for row, truth in enumerate(batch["truth"]):
            ids = batch["input_ids"][row]
            words = vocab.decode([t for t, m in zip(ids.tolist(), batch["mask"][row].tolist()) if m]).split()
            prompt = vocab.decode(ids[batch["attention_mask"][row].bool()].tolist())
            target = [w for w in words if w != vocab.words[vocab.eos]]
            if CAPTION_PROMPT in prompt:  # caption: exactly the objects present
                assert target == world.caption(truth).split()
            else:  # yes/no probe: the truthful answer
                shape = next(s for s in world.shapes if f"is there a {s} ?" in prompt)
                assert target == ["yes" if shape in truth else "no"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
