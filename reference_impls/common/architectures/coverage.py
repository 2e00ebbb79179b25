"""The method x architecture matrix: run every method on every tiny architecture, record the outcome.

For each cell (one registered method, one architecture of :mod:`.zoo`), on one prompt with one
image:

1. **No-op equals unmodified**: the method at its no-op setting (budget 1.0; alpha 0 for VCD and
   PAI; a draft that sees every visual token for speculative decoding) must give the same greedy
   tokens as the unmodified ``model.generate``, and logits within ``NOOP_ATOL``.
2. **The method acts**: at a reduced setting it keeps fewer KV bytes or visual tokens (or, for
   VCD / PAI, changes the logits).

A method that refuses (raises :class:`~reference_impls.common.architectures.UnsupportedFeature`)
is recorded as ``refused`` with the exact message; anything else that goes wrong is ``failed``
(the test of this matrix accepts no failed cell). :func:`coverage_rows` is the data of the table
on the site (``reference_impls/results/architecture-coverage.json``).

Examples:
    >>> cell = run_cell("snapkv", "llava")
    >>> cell["status"], cell["acted"]
    ('supported', True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from reference_impls.common.architectures import UnsupportedFeature, adapter_for
from reference_impls.common.architectures.zoo import (
    ARCHITECTURES,
    tiny_config,
    tiny_vlm,
)
from reference_impls.registry import get_method

__all__ = ["MATRIX_METHODS", "NOOP_ATOL", "coverage_rows", "run_cell"]

NEW_TOKENS = 6
NOOP_ATOL = 1e-5
"""Largest logit difference accepted at the no-op setting (float32 summation order)."""
ACT_MIN_GAP = 1e-5
"""Smallest logit change that counts as acting, for methods that keep every token (VCD, PAI): the
no-op tolerance (their no-op gap is exactly 0; on the random tiny models their effect is 1e-4 to 0.4)."""

KV = ("snapkv", "h2o", "streamingllm", "kivi", "hybridkv", "pyramidkv", "adakv", "lookm")
LAYER_DROP = ("fastv", "sparsevlm", "pyramiddrop", "divprune", "block-sparse")
ENCODING = ("random-pruning", "tome", "prumerge", "projector-pooling", "visionzip")
MATRIX_METHODS: tuple[str, ...] = KV + LAYER_DROP + ENCODING + ("speculative", "vcd", "pai")
"""Matrix rows. Methods left out need a trained draft, video, or are not inference-time methods."""
_REDUCED = {"kivi": 0.125}
_EXTRA = {  # sizes for the 2-layer models and their 13-90 token prompts (same at the no-op and the reduced setting)
    "fastv": {"layer": 1},  # the default layer 2 is past the last layer
    "block-sparse": {"block_size": 2},  # the default 64-token blocks exceed the prompts (4-88 visual tokens)
    "kivi": {"group_size": 4, "residual_length": 4},  # the defaults (32, 32) keep short prompts in full precision
    "hybridkv": {"n_sink": 2, "window": 4, "window_min": 2},  # the default window (32) exceeds the budget
}


def _generate(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True
    )
    return out.sequences[0, -NEW_TOKENS:], torch.stack(out.logits).float()


def _with(method) -> Callable:
    def run(model, inputs):
        with method(model):
            return _generate(model, inputs)

    return run


def _setting(name: str, noop: bool):
    """The method object and a function that reports whether it acted."""
    spec = get_method(name)
    if spec.kind in ("kv-cache", "visual-token"):
        budget = 1.0 if noop else _REDUCED.get(name, 0.25)
        method = spec.target(budget=budget, **_EXTRA.get(name, {}))
        if spec.kind == "kv-cache":
            return _with(method), lambda: method.stats["resident_bytes"] < method.stats["full_bytes"]
        if name == "block-sparse":  # keeps every token, attends to fewer blocks
            return _with(method), lambda: method.stats["density"] < 1.0
        return _with(method), lambda: method.stats["visual_kept"] < method.stats["visual_in"]
    if name == "vcd":
        return _with(spec.target(alpha=0.0 if noop else 1.0)), None
    if name == "pai":  # the default start_layer 2 (upstream, LLaMA-7B) is past the 2-layer models
        return _with(spec.target(alpha=0.0 if noop else 0.5, start_layer=0)), None
    if name == "speculative":
        method = spec.target(draft_visual_keep=1.0 if noop else 0.25)

        def run(model, inputs):
            result = method(model, inputs, max_new_tokens=NEW_TOKENS)
            return torch.tensor(result.tokens), None

        return run, lambda: method.stats["visual_kept"] < method.stats["visual_in"]
    raise ValueError(f"{name!r} is not a matrix method")


def run_cell(name: str, arch: str, model=None, inputs=None, reference=None) -> dict[str, Any]:
    """Outcome of one cell: ``{"status": "supported"|"refused"|"failed", "reason", ...}``."""
    try:
        adapter_for(tiny_config(arch))
    except UnsupportedFeature as error:
        return {"status": "refused", "reason": str(error)}
    if model is None:
        model, inputs = tiny_vlm(arch)
    if reference is None:
        with torch.no_grad():
            reference = _generate(model, inputs)
    ref_tokens, ref_logits = reference
    try:
        run, _ = _setting(name, noop=True)
        with torch.no_grad():
            tokens, logits = run(model, inputs)
        gap = 0.0 if logits is None else float((logits - ref_logits).abs().max())
        if not torch.equal(tokens, ref_tokens) or gap > NOOP_ATOL:
            return {"status": "failed", "reason": f"no-op setting changed the output (max logit gap {gap:.2e})"}
        run, acted = _setting(name, noop=False)
        with torch.no_grad():
            tokens_small, logits_small = run(model, inputs)
        did_act = acted() if acted is not None else float((logits_small - ref_logits).abs().max()) > ACT_MIN_GAP
        if not did_act:
            return {"status": "failed", "reason": "the reduced setting did not act"}
        if name == "speculative" and not torch.equal(tokens_small, ref_tokens):  # strict acceptance is lossless
            return {"status": "failed", "reason": "speculative decoding changed the greedy output"}
        return {"status": "supported", "reason": "", "noop_max_logit_gap": gap, "acted": True}
    except UnsupportedFeature as error:
        return {"status": "refused", "reason": str(error)}
    except Exception as error:  # noqa: BLE001 - recorded, and the matrix test rejects it
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}


def coverage_rows(methods=MATRIX_METHODS, architectures=ARCHITECTURES) -> list[dict[str, Any]]:
    """Every cell, architecture by architecture (one tiny model and one reference run each)."""
    rows = []
    for arch in architectures:
        model = inputs = reference = None
        try:
            adapter_for(tiny_config(arch))
            model, inputs = tiny_vlm(arch)
            with torch.no_grad():
                reference = _generate(model, inputs)
        except UnsupportedFeature:
            pass
        for name in methods:
            torch.manual_seed(0)
            cell = run_cell(name, arch, model, inputs, reference)
            rows.append({"method": name, "architecture": arch, **cell})
    return rows


if __name__ == "__main__":  # pragma: no cover - quick look
    import time

    start = time.perf_counter()
    for row in coverage_rows():
        print(f"{row['method']:18s} {row['architecture']:16s} {row['status']:9s} {row['reason'][:150]}")
    print(f"{time.perf_counter() - start:.1f} s")
