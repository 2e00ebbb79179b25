"""Accuracy and kept visual tokens vs budget on ToyVLM, for the notebooks of this package.

Every method is evaluated with :func:`reference_impls.common.harness.evaluate` at a list of
budgets, next to the random-pruning baseline, on the same held-out scenes, without decode
steps (notebooks must stay fast). The reproduced numbers with more samples and all costs come
from the shared benchmark ``python -m reference_impls.bench.tokens``, which runs every
registered visual-token method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from reference_impls.common.harness import evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.toyvlm import ToyVLM, build_vocab, load_toyvlm, toyvlm_config

__all__ = ["load_bundle", "budget_sweep", "print_sweep", "plot_sweep", "object_recall"]


def load_bundle() -> tuple[ToyVLM, bool]:
    """The committed ToyVLM, or (when no checkpoint exists) a random-init one; ``(bundle, trained)``."""
    try:
        return load_toyvlm(), True
    except FileNotFoundError:
        from transformers import Qwen2_5_VLForConditionalGeneration

        vocab = build_vocab()
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(toyvlm_config(vocab)).eval()
        return ToyVLM(model=model, vocab=vocab), False


def budget_sweep(
    bundle: ToyVLM,
    methods: dict[str, Callable[[float], Any]],
    budgets: list[float],
    *,
    n: int,
    seed: int = 1,
    samples=None,
    baseline: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every ``methods[name](budget)`` (and random pruning) at every budget.

    Budget 1.0 is the unpatched model for every method (tested), so it is evaluated once, as
    the row ``"full model"``, and every method's curve starts from it.

    Returns:
        One row per (method, budget): ``method``, ``budget``, ``accuracy`` (%),
        ``visual_tokens`` (mean kept), ``visual_tokens_full`` and ``prefill_ms``.
    """
    samples = samples if samples is not None else bundle.samples(n, seed)
    factories = dict(methods)
    if baseline:
        factories["random-pruning"] = lambda budget: RandomPruning(budget=budget)
    runs = [("full model", 1.0, None)] + [
        (name, b, make) for name, make in factories.items() for b in budgets if b < 1.0
    ]
    rows = []
    for name, budget, make in runs:
        result = evaluate(bundle, make(budget) if make else None, samples=samples, decode_tokens=0)
        rows.append(
            {
                "method": name,
                "budget": budget,
                "accuracy": 100 * result["accuracy"],
                "visual_tokens": result["visual_tokens"],
                "visual_tokens_full": result["visual_tokens_full"],
                "prefill_ms": 1000 * result["prefill_s"],
            }
        )
    return rows


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """A plain-text table of :func:`budget_sweep` rows."""
    print(f"{'method':<28} {'budget':>6} {'accuracy %':>10} {'kept tokens':>11} {'prefill ms':>10}")
    for row in rows:
        print(
            f"{row['method']:<28} {row['budget']:>6.3g} {row['accuracy']:>10.1f} {row['visual_tokens']:>11.1f} {row['prefill_ms']:>10.1f}"
        )


def plot_sweep(rows: list[dict[str, Any]], title: str = ""):
    """Accuracy vs kept visual tokens, one line per method (matplotlib figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    full = [row for row in rows if row["method"] == "full model"]
    for name in dict.fromkeys(row["method"] for row in rows if row["method"] != "full model"):
        mine = full + [row for row in rows if row["method"] == name]
        ax.plot(
            [r["visual_tokens"] for r in mine],
            [r["accuracy"] for r in mine],
            marker="o",
            label=name,
            linestyle="--" if name == "random-pruning" else "-",
        )
    ax.set(xlabel="visual tokens kept (mean per prompt)", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    return fig


@torch.no_grad()
def object_recall(bundle: ToyVLM, method, samples) -> float:
    """Fraction of the scenes' objects whose own token is among the kept (or representative) tokens.

    ToyVLM objects fill exactly one merged-token cell, so this asks whether a method's scores
    find the objects; random pruning scores the budget itself on average. For merging methods
    a kept token may also carry merged neighbours, so this is a proxy, not the whole story.
    """
    chosen: dict[str, Any] = {}
    select = method.select

    def recording_select(ctx):
        selection = select(ctx)
        chosen.update(ctx=ctx, keep=set(selection.keep[0].tolist()))
        return selection

    method.select = recording_select
    hits = total = 0
    try:
        with method(bundle.model):
            for sample in samples:
                bundle.model(**bundle.collate([sample]))
                items = chosen["ctx"].items[0]
                for obj in sample.scene.objects:
                    start, _, _, w = items[obj.image]
                    hits += (start + obj.row * w + obj.col) in chosen["keep"]
                    total += 1
    finally:
        del method.select
    return hits / max(1, total)
