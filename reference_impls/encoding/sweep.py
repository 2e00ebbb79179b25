"""Exact match and kept visual tokens vs budget on ToyVLM v2, for the notebooks of this package.

Every method is evaluated with :func:`reference_impls.common.harness.evaluate` at a list of
budgets, next to the random-pruning baseline, on the same held-out samples of one ToyVLM v2 suite
(:data:`reference_impls.common.chat_scenes.SUITES`): each reply is decoded greedily until
``<eos>`` and counts only when it equals the answer (exact match), overall and per question kind.
A ToyVLM v1 bundle (question first, one-word answers: the layout ablation) is accepted too, so the
ablation can be swept the same way. The reproduced numbers, with more samples,
seeds and all costs, come from the shared benchmark ``python -m reference_impls.bench.tokens
--suite short`` (videos: ``python -m reference_impls.bench.video_tokens --suite video``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reference_impls.common.chat_scenes import ChatSample
from reference_impls.common.harness import evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.toyvlm import ToyVLM
from reference_impls.common.toyvlm_v2 import ToyVLMv2
from reference_impls.common.visual_tokens import Selection

__all__ = ["budget_sweep", "print_sweep", "plot_sweep", "object_recall"]


def budget_sweep(
    bundle: ToyVLMv2 | ToyVLM,
    methods: dict[str, Callable[[float], Any]],
    budgets: list[float],
    *,
    n: int,
    seed: int = 1,
    suite: str = "short",
    samples=None,
    baseline: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every ``methods[name](budget)`` (and random pruning) at every budget.

    Samples: ``samples`` when given, else ``n`` held-out samples of ToyVLM v2's ``suite`` drawn
    from ``seed`` (a v1 bundle ignores ``suite``). Budget 1.0 is the unpatched model for every
    method (tested), so it is evaluated once, as the row ``"full model"``, and every method's
    curve starts from it.

    Returns:
        One row per (method, budget): ``method``, ``budget``, ``accuracy`` (% of exact-match
        replies; v1: % of right one-word answers), ``by_kind`` (the same per question kind),
        ``kinds`` (samples per kind), ``visual_tokens`` (mean kept), ``visual_tokens_full`` and
        ``prefill_ms``.
    """
    if samples is None:
        samples = bundle.samples(n, seed, suite) if isinstance(bundle, ToyVLMv2) else bundle.samples(n, seed)
    kinds = dict(sorted(Counter(sample.qa.kind for sample in samples).items()))
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
                "by_kind": {kind: 100 * value for kind, value in result["accuracy_by_kind"].items()},
                "kinds": kinds,
                "visual_tokens": result["visual_tokens"],
                "visual_tokens_full": result["visual_tokens_full"],
                "prefill_ms": 1000 * result["prefill_s"],
            }
        )
    return rows


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """A plain-text table of :func:`budget_sweep` rows, then the share of right replies per
    question kind (with the number of samples of each kind: a few samples move it by a lot)."""
    print(f"{'method':<28} {'budget':>6} {'correct %':>9} {'kept tokens':>11} {'prefill ms':>10}")
    for row in rows:
        print(
            f"{row['method']:<28} {row['budget']:>6.3g} {row['accuracy']:>9.1f} {row['visual_tokens']:>11.1f} {row['prefill_ms']:>10.1f}"
        )
    kinds = rows[0]["kinds"] if rows else {}
    if len(kinds) < 2:
        return
    print("\ncorrect % per question kind (samples)")
    header = "".join(f"{f'{kind} ({count})':>14}" for kind, count in kinds.items())
    print(f"{'method':<28} {'budget':>6}{header}")
    for row in rows:
        cells = "".join(f"{row['by_kind'].get(kind, float('nan')):>14.0f}" for kind in kinds)
        print(f"{row['method']:<28} {row['budget']:>6.3g}{cells}")


def plot_sweep(rows: list[dict[str, Any]], title: str = ""):
    """Right replies vs kept visual tokens, one line per method (matplotlib figure)."""
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
    ax.set(xlabel="visual tokens kept (mean per prompt)", ylabel="correct replies (%)", title=title)
    ax.legend(fontsize=8)
    return fig


@torch.no_grad()
def object_recall(bundle: ToyVLMv2, method, samples: Sequence[ChatSample]) -> float:
    """Share of the scenes' objects of which at least one token is among the kept (or
    representative) visual tokens.

    A ToyVLM v2 object covers 1-4 merged tokens (:attr:`ChatScene.object_tokens`), so this asks
    whether a method's selection still shows each object somewhere. Random pruning at budget
    ``b`` finds an object of ``k`` tokens with probability about ``1 - (1 - b) ** k``, more than
    ``b``. For merging methods a kept token may also carry merged neighbours, so this is a
    proxy, not the whole story. Prefill only (no reply is decoded).
    """
    chosen: dict[str, Any] = {}
    select = method.select

    def recording_select(ctx):
        selection = select(ctx)
        keep = selection.keep if isinstance(selection, Selection) else selection  # a bare list is allowed
        chosen["keep"] = set(keep[0].tolist())
        return selection

    method.select = recording_select
    hits = total = 0
    try:
        with method(bundle.model):
            for sample in samples:
                bundle.model(**bundle.collate([sample]))
                for tokens in sample.scene.object_tokens:
                    if tokens:  # an object hidden under its neighbours shows in no token
                        hits += bool(chosen["keep"].intersection(tokens))
                        total += 1
    finally:
        del method.select
    return hits / max(1, total)
