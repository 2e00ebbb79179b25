"""Benchmark: ToyVLM accuracy and cost vs the fraction of visual tokens kept.

``python -m reference_impls.bench.tokens`` runs every registered ``kind="visual-token"`` method
(``registry.all_methods(kind="visual-token")``) plus the random-pruning baseline at budgets
100/50/25/10% on the committed ToyVLM (256 visual tokens per sample: four 224 px images), on
the same held-out samples, and records accuracy, visual tokens kept, prefill time, KV bytes
and decode ms/token. Results go to ``reference_impls/results/tokens-toyvlm.json`` (families =
the methods' families; rows carry their method's family, the baseline rows none).

Options: ``--methods a,b`` (default: all), ``--n`` samples per setting, ``--budgets``,
``--checkpoint`` (any local ToyVLM bundle), ``--quick`` (n=20, for smoke runs).

Deviations / guesses:
    Times are CPU wall-clock on a shared machine: compare rows of one run only. Each method is
    instantiated with its dataclass defaults and ``budget`` set.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..common.harness import evaluate
from ..common.random_pruning import RandomPruning
from ..common.results import Column, Plot, Results, command_line, save_results
from ..common.toyvlm import load_toyvlm
from ..registry import all_methods

__all__ = ["run", "main"]

BUDGETS = (1.0, 0.5, 0.25, 0.1)


def run(
    methods: list[str] | None = None,
    n: int = 200,
    budgets=BUDGETS,
    checkpoint: str | None = None,
    seed: int = 1,
    log=print,
) -> Results:
    """Evaluate the methods at each budget; returns the :class:`Results` (not yet saved)."""
    bundle = load_toyvlm(checkpoint)
    specs = {spec.name: spec for spec in all_methods(kind="visual-token")}
    specs.setdefault("random-pruning", next(s for s in all_methods() if s.target is RandomPruning))
    names = sorted(specs) if not methods else methods
    samples = bundle.samples(n, seed)
    rows = []
    baseline = evaluate(bundle, None, samples=samples)
    rows.append(_row("none (all tokens)", "", 1.0, baseline))
    log(f"{'method':24s} budget  acc    tokens  prefill_ms  llm_ms  kv_KiB  decode_ms")
    log(_line(rows[-1]))
    for name in names:
        spec = specs[name]
        for budget in budgets:
            method = spec.target(budget=budget)
            start = time.perf_counter()
            result = evaluate(bundle, method, samples=samples)
            family = "" if spec.target is RandomPruning else spec.family
            rows.append(_row(name, family, budget, result))
            log(_line(rows[-1]) + f"   ({time.perf_counter() - start:.0f}s)")
    families = sorted({specs[name].family for name in names})
    manifest = bundle.manifest
    notes = (
        f"ToyVLM ({manifest.get('parameters', '?')} parameters, held-out accuracy "
        f"{manifest.get('held_out_accuracy', {}).get('all', '?')} at training time), {n} held-out samples "
        f"(seed {seed}), {rows[0]['visual_tokens_full']:.0f} visual tokens per sample (four 224 px images). "
        "Random pruning is the baseline (family left empty so that it shows on every page). Prefill includes "
        "the vision tower, which still encodes every patch; 'LLM prefill' excludes it. Times are "
        "CPU wall-clock on a 2-core machine shared with other jobs: compare rows of this run only."
    )
    return Results(
        id="tokens-toyvlm",
        title="ToyVLM: accuracy and cost vs visual tokens kept",
        command="",
        families=families,
        columns=[
            Column("method", "Method"),
            Column("budget", "Budget (fraction kept)", digits=2),
            Column("accuracy", "Accuracy", "%", digits=1),
            Column("visual_tokens", "Visual tokens", digits=1),
            Column("prefill_ms", "Prefill (encode + LLM)", "ms", digits=1),
            Column("llm_prefill_ms", "LLM prefill", "ms", digits=1),
            Column("kv_kib", "KV cache", "KiB", digits=1),
            Column("decode_ms", "Decode", "ms/token", digits=2),
        ],
        rows=rows,
        plots=[
            Plot(x="visual_tokens", y="accuracy", group="method", title="Accuracy vs visual tokens kept"),
            Plot(x="visual_tokens", y="llm_prefill_ms", group="method", title="LLM prefill time vs visual tokens kept"),
        ],
        notes=notes,
    )


def _row(method: str, family: str, budget: float, result: dict) -> dict:
    return {
        "method": method,
        "family": family,
        "budget": budget,
        "accuracy": round(100 * result["accuracy"], 2),
        "visual_tokens": result["visual_tokens"],
        "visual_tokens_full": result["visual_tokens_full"],
        "prefill_ms": round(1000 * result["prefill_s"], 3),
        "llm_prefill_ms": round(1000 * (result["prefill_s"] - result["encode_s"]), 3),
        "kv_kib": round(result["kv_bytes"] / 1024, 2),
        "decode_ms": round(result["decode_ms_per_token"], 3),
        "accuracy_by_kind": {k: round(100 * v, 1) for k, v in result["accuracy_by_kind"].items()},
    }


def _line(row: dict) -> str:
    return f"{row['method']:24s} {row['budget']:5.2f}  {row['accuracy']:5.1f}  {row['visual_tokens']:6.1f}  {row['prefill_ms']:10.1f}  {row['llm_prefill_ms']:6.1f}  {row['kv_kib']:6.1f}  {row['decode_ms']:8.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ToyVLM accuracy vs visual tokens kept")
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated registered names (default: all visual-token methods + random-pruning)",
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n=20, for a smoke run")
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 20 if args.quick else args.n
    methods = [m for m in args.methods.split(",") if m] or None
    budgets = tuple(float(b) for b in args.budgets.split(","))
    results = run(methods, n=n, budgets=budgets, checkpoint=args.checkpoint, log=lambda *a: print(*a, flush=True))
    results.command = command_line("reference_impls.bench.tokens", argv)
    path = save_results(results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
