"""Model and prompt for the KV-cache notebooks: ToyVLM when its checkpoint is present, else a tiny random model."""

from __future__ import annotations

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

__all__ = ["demo_model_and_prompt"]


def demo_model_and_prompt(n_images: int = 2, seed: int = 7) -> tuple[torch.nn.Module, dict, str]:
    """``(model, batch-1 inputs, description)``.

    ToyVLM prompts put the question first and end with ``answer``; the tiny fallback is a
    random-init Qwen2.5-VL with ``n_images`` images of 64 merged tokens between text.
    """
    try:
        from reference_impls.common.toyvlm import CHECKPOINT_DIR, load_toyvlm

        if not (CHECKPOINT_DIR / "manifest.json").exists():
            raise FileNotFoundError(CHECKPOINT_DIR)
        toy = load_toyvlm()
        sample = toy.samples(1, seed=seed)[0]
        inputs = toy.collate([sample])
        return toy.model.eval(), inputs, f"ToyVLM ({sample.qa.question} -> {sample.qa.answer})"
    except (ImportError, FileNotFoundError, OSError):
        model = tiny_qwen25vl(seed=0, num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2)
        inputs = tiny_inputs(model, grids=((16, 16),) * n_images, prompt_before=12, prompt_after=16, seed=seed)
        return model, inputs, "tiny random-init Qwen2.5-VL"
