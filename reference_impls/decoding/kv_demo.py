"""Helpers for the KV-cache notebooks: a model and prompt (ToyVLM v2 in the chat layout when its
checkpoint is present, else a tiny random model) and the teacher-forced drift of a compressed cache
from the full one."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding.cache import greedy_decode

__all__ = ["demo_model_and_prompt", "kl_drift"]


def demo_model_and_prompt(n_images: int = 2, seed: int = 7) -> tuple[torch.nn.Module, dict, str]:
    """``(model, batch-1 inputs, description)``.

    With the committed ToyVLM v2: one held-out sample of its long suite (16 labelled images of 64
    merged tokens first, the question last, a reply of 5-20 tokens), drawn from evaluation seed
    ``seed`` (the KV benchmark reports seeds 10-19). The tiny fallback is a random-init Qwen2.5-VL
    with ``n_images`` images of 64 merged tokens between text.
    """
    try:
        from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

        toy = load_toyvlm_v2()
        sample = toy.samples(1, seed=seed, suite="long")[0]
        inputs = toy.collate([sample])
        return toy.model.eval(), inputs, f"ToyVLM v2, long suite ({sample.qa.question} -> {sample.qa.answer})"
    except (ImportError, FileNotFoundError, OSError):
        model = tiny_qwen25vl(seed=0, num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2)
        inputs = tiny_inputs(model, grids=((16, 16),) * n_images, prompt_before=12, prompt_after=16, seed=seed)
        return model, inputs, "tiny random-init Qwen2.5-VL"


def kl_drift(
    model: torch.nn.Module, inputs: dict, make_method: Callable[[float], object], budgets: tuple[float, ...], steps: int
) -> list[float]:
    """KL(full || compressed) of the next-token distribution, averaged over ``steps`` decode steps.

    The compressed run is teacher-forced on the full cache's greedy tokens, so every step compares
    the two caches on the same prefix. Returns one value per budget; ``make_method(budget)``
    builds the KV-cache method.
    """
    n = inputs["input_ids"].shape[1]
    reference = model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = reference.sequences[:, n:]
    reference_logp = torch.stack(reference.logits)[:, 0].log_softmax(-1)  # (steps, V)
    drifts = []
    for budget in budgets:
        method = make_method(budget)
        with method(model):
            _, logits = greedy_decode(
                model, inputs, method.make_cache(model, inputs["input_ids"]), steps, forced=tokens
            )
        drifts.append(
            float(
                torch.nn.functional.kl_div(
                    logits.log_softmax(-1), reference_logp, log_target=True, reduction="batchmean"
                )
            )
        )
    return drifts
