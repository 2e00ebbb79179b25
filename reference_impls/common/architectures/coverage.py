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
from reference_impls.registry import all_methods, get_method

__all__ = [
    "MATRIX_METHODS",
    "NOOP_ATOL",
    "NOT_IN_MATRIX",
    "coverage_rows",
    "left_out_note",
    "matrix_methods",
    "not_in_matrix",
    "run_cell",
]

NEW_TOKENS = 6
NOOP_ATOL = 1e-5
"""Largest logit difference accepted at the no-op setting (float32 summation order)."""
ACT_MIN_GAP = 1e-5
"""Smallest logit change that counts as acting, for methods that keep every token (VCD, PAI): the
no-op tolerance (their no-op gap is exactly 0; on the random tiny models their effect is 1e-4 to 0.4)."""

_KIND_NOT_IN_MATRIX = {
    "unlearning": "fine-tuning methods that change weights, not inference-time model patches",
    "continual-ad": "continual training for anomaly detection, not inference-time VLM patches",
    "analysis": "measures a model, does not change it",
}
NOT_IN_MATRIX: dict[str, str] = {
    "adaptive-resolution": "re-encodes each image at a grid chosen from its edge density; the matrix's "
    "random-pixel images are all edges, so no reduced setting acts",
    "keyframes-maxmin": "selects video frames; the matrix prompt holds one image",
    "keyframes-learned": "selects video frames with a trained scorer; the matrix prompt holds one image",
    "temporal-merging": "merges tokens across video frames; the matrix prompt holds one image",
    "twig-speculative": "needs a trained draft head",
    "confidence-gated": "routes between runs of other methods, a pruned first pass then an escalation; "
    "no matrix setting written",
    "attention-reuse-layers": "no matrix setting written for its anchor/sharer layer plan",
    "dpo": "fine-tuning methods that change weights, not inference-time model patches",
    "grounded-tuning": "fine-tuning methods that change weights, not inference-time model patches",
    "steering": "needs a steering vector computed from paired grounded/hallucinated captions",
    "self-check-correction": "corrects the generated text after decoding, a pipeline around generate",
}
"""Registered methods left out of the matrix by name, with why (methods of the kinds in
``_KIND_NOT_IN_MATRIX`` are left out by kind). Every other registered method is a row."""
_KIND_ORDER = ("kv-cache", "visual-token", "decoding", "hallucination")


def not_in_matrix(spec) -> str | None:
    """Why a registered method is not a matrix row, or None when it is one."""
    return NOT_IN_MATRIX.get(spec.name) or _KIND_NOT_IN_MATRIX.get(spec.kind)


def left_out_note() -> str:
    """The registered methods that are not rows, grouped by why (for the results notes)."""
    groups: dict[str, list[str]] = {}
    for spec in all_methods():
        why = not_in_matrix(spec)
        if why is not None:
            groups.setdefault(why, []).append(spec.name)
    return "; ".join(f"{', '.join(names)} ({why})" for why, names in groups.items())


def matrix_methods() -> tuple[str, ...]:
    """Matrix rows: every registered method not left out (:func:`not_in_matrix`), by kind, family, name."""
    specs = [spec for spec in all_methods() if not_in_matrix(spec) is None]
    rank = {kind: i for i, kind in enumerate(_KIND_ORDER)}
    specs.sort(key=lambda spec: (rank.get(spec.kind, len(rank)), spec.family, spec.name))
    return tuple(spec.name for spec in specs)


MATRIX_METHODS: tuple[str, ...] = matrix_methods()
"""Matrix rows, from the registry (a newly registered method is picked up; see :data:`NOT_IN_MATRIX`)."""
_REDUCED = {"kivi": 0.125}
_EXTRA = {  # sizes for the 2-layer models and their 13-90 token prompts (same at the no-op and the reduced setting)
    "fastv": {"layer": 1},  # the default layer 2 is past the last layer
    "block-sparse": {"block_size": 2},  # the default 64-token blocks exceed the prompts (4-88 visual tokens)
    "kivi": {"group_size": 4, "residual_length": 4},  # the defaults (32, 32) keep short prompts in full precision
    "hybridkv": {"n_sink": 2, "window": 4, "window_min": 2},  # the default window (32) exceeds the budget
}
_ACTED = {  # visual-token methods that keep every token: the stat below 1.0 that says they acted
    "block-sparse": "density",  # fraction of causal query-key blocks computed
    "op-skip": "visual_flops",  # fraction of the visual tokens' linear-layer FLOPs computed
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
        if name in _ACTED:
            return _with(method), lambda: method.stats[_ACTED[name]] < 1.0
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
    raise ValueError(f"no matrix setting for {name!r} (kind {spec.kind}): add one here, or a reason to NOT_IN_MATRIX")


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
