"""Accuracy and kept visual tokens vs budget on ToyVLM for the encoding-stage methods.

The notebooks of this package and the benchmark below share these helpers: every method is
evaluated with :func:`reference_impls.common.harness.evaluate` at a list of budgets, next to
the random-pruning baseline, on the same held-out scenes.

Benchmark (writes ``reference_impls/results/encoding-toyvlm.json``)::

    python -m reference_impls.encoding.sweep --n 200
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from reference_impls.common.harness import evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.toyvlm import ToyVLM, build_vocab, load_toyvlm, toyvlm_config

__all__ = ["load_bundle", "budget_sweep", "print_sweep", "plot_sweep", "method_factories"]


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
    runs = [("full model", 1.0, None)] + [(name, b, make) for name, make in factories.items() for b in budgets if b < 1.0]
    rows = []
    for name, budget, make in runs:
        result = evaluate(bundle, make(budget) if make else None, samples=samples, decode_tokens=0)
        rows.append({
            "method": name,
            "budget": budget,
            "accuracy": 100 * result["accuracy"],
            "visual_tokens": result["visual_tokens"],
            "visual_tokens_full": result["visual_tokens_full"],
            "prefill_ms": 1000 * result["prefill_s"],
        })
    return rows


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """A plain-text table of :func:`budget_sweep` rows."""
    print(f"{'method':<28} {'budget':>6} {'accuracy %':>10} {'kept tokens':>11} {'prefill ms':>10}")
    for row in rows:
        print(f"{row['method']:<28} {row['budget']:>6.3g} {row['accuracy']:>10.1f} {row['visual_tokens']:>11.1f} {row['prefill_ms']:>10.1f}")


def plot_sweep(rows: list[dict[str, Any]], title: str = ""):
    """Accuracy vs kept visual tokens, one line per method (matplotlib figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    full = [row for row in rows if row["method"] == "full model"]
    for name in dict.fromkeys(row["method"] for row in rows if row["method"] != "full model"):
        mine = full + [row for row in rows if row["method"] == name]
        ax.plot([r["visual_tokens"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=name,
                linestyle="--" if name == "random-pruning" else "-")
    ax.set(xlabel="visual tokens kept (mean per prompt)", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    return fig


def method_factories() -> dict[str, tuple[str, Callable[[float], Any]]]:
    """``{name: (family, budget -> method)}`` for every visual-token method of this package."""
    from reference_impls.encoding.adaptive_resolution import AdaptiveResolution
    from reference_impls.encoding.keyframes import KeyframeSelection
    from reference_impls.encoding.pooling import ProjectorPooling
    from reference_impls.encoding.prumerge import PruMerge
    from reference_impls.encoding.tome import ToMe
    from reference_impls.encoding.visionzip import VisionZip

    return {
        "projector-pooling": ("modality-adapters", lambda b: ProjectorPooling(budget=b)),
        "tome": ("encoding-compression-attention-agnostic", lambda b: ToMe(budget=b)),
        "prumerge": ("encoding-compression-attention-agnostic", lambda b: PruMerge(budget=b)),
        "visionzip": ("encoding-compression-attention-aware", lambda b: VisionZip(budget=b)),
        "keyframes-maxmin (images as frames)": ("keyframe-selection-training-free", lambda b: KeyframeSelection(budget=b, images_as_frames=True)),
        "adaptive-resolution": ("adaptive-resolution", lambda b: AdaptiveResolution(budget=b)),
    }


def main() -> None:
    from reference_impls.common.results import Column, Plot, Results, save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle, trained = load_bundle()
    if not trained:
        raise SystemExit("no ToyVLM checkpoint: the benchmark needs the trained model")
    factories = method_factories()
    start = time.time()
    rows = budget_sweep(bundle, {name: make for name, (_, make) in factories.items()}, args.budgets, n=args.n)
    for row in rows:
        row["family"] = factories[row["method"]][0] if row["method"] in factories else ""
    print_sweep(rows)
    results = Results(
        id="encoding-toyvlm",
        title="ToyVLM accuracy vs kept visual tokens, encoding-stage methods",
        command=f"python -m reference_impls.encoding.sweep --n {args.n} --budgets {' '.join(map(str, args.budgets))}",
        families=sorted({family for family, _ in factories.values()}),
        columns=[
            Column("method", "Method"), Column("budget", "Budget", digits=3),
            Column("accuracy", "Accuracy", "%", digits=1), Column("visual_tokens", "Visual tokens kept", digits=1),
            Column("visual_tokens_full", "Visual tokens (full)", digits=0), Column("prefill_ms", "Prefill", "ms", digits=1),
        ],
        rows=rows,
        plots=[Plot(x="visual_tokens", y="accuracy", group="method", title="Accuracy vs visual tokens kept")],
        notes=(f"{args.n} held-out ToyVLM samples (seed 1), batch 1, greedy answer token; the same samples for every "
               f"row. Budget 1.0 equals the unpatched model for every method. Prefill times are CPU wall-clock on a "
               f"shared machine (compare within this file only). Run time {time.time() - start:.0f} s."),
    )
    print(save_results(results))


if __name__ == "__main__":
    main()
