"""ToyVLM benchmark of the prefilling-stage methods: accuracy and prefill time vs visual budget.

Every method is compared with random visual-token pruning at the same budget (before the LLM,
and at FastV's layer), and the block-sparse attention is timed against dense sdpa on a long
synthetic visual context. Run ``python -m reference_impls.prefilling.bench`` (``--quick`` for a
smoke run); it prints the table and writes ``reference_impls/results/prefilling-toyvlm.json``
(each reported seed, 10-19 by default, draws its own held-out samples: means over seeds with 95%
intervals), ``prefilling-toyvlm-tests.json`` (every method against random pruning at the same
budget, paired by seed) and ``reference_impls/results/block-sparse-cost.json``. Timings on a shared CPU are noisy; the
methods are timed in one interleaved run so their ratios are comparable.

Without a ToyVLM checkpoint the accuracy falls back to *agreement* with the unpruned model's
answer on a tiny random-init Qwen2.5-VL (``source == "tiny-random"`` in the results).

``--suite short`` (or any ToyVLM v2 suite, ``--checkpoint``) runs the same methods and variants on
ToyVLM v2 with the tokens bench's per-sample protocol (:func:`run_chat`: replies decoded until
``<eos>``, exact match, batch 1) at budgets 50/25/10% and writes
``prefilling-toyvlm-v2-<suite>.json`` and its tests (no block-sparse cost table: that one does not
read the model).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reference_impls.common.architectures import adapter_for
from reference_impls.common.toyvlm import ABLATION_TITLE
from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropContext, SingleLayerDrop, keep_top_visual

__all__ = [
    "RandomDrop",
    "load_data",
    "method_factories",
    "evaluate",
    "sweep",
    "sparse_cost",
    "print_sweep",
    "chat_sweep",
    "plot_chat",
    "print_chat",
    "show_committed",
    "plot_token_scores",
    "run_chat",
    "main",
]


@dataclass
class RandomDrop(SingleLayerDrop):
    """Baseline: keep a uniformly random subset of the visual tokens at layer ``layer`` (> 0).

    Before the LLM the shared ``random-pruning`` baseline (reference_impls.common) is used.
    """

    budget: float = 0.5
    layer: int = 0
    seed: int = 0
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def select(self, ctx: DropContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(ctx.visual.shape, generator=generator).to(ctx.visual.device)
        return keep_top_visual(scores, ctx.visual, keep_count(ctx.n_visual_in, self.budget))


@dataclass
class Data:
    model: Any
    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]]  # (inputs, answer ids)
    answer_ids: torch.Tensor | None
    source: str


def _model_title(source: str) -> str:
    """How a results title names the data source: the question-first ToyVLM is the v1 ablation."""
    return ABLATION_TITLE if source == "toyvlm" else source


def _encode_once(model, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Replace ``pixel_values`` by precomputed vision features (``mm_encoder_outputs``)."""
    inputs = dict(inputs)
    pixels = inputs.pop("pixel_values")
    with torch.no_grad():
        features = model.model.get_image_features(pixels, inputs["image_grid_thw"], return_dict=True)
    inputs["mm_encoder_outputs"] = {"image": features}
    return inputs


def load_data(n: int = 64, batch_size: int = 16, seed: int = 1) -> Data:
    """ToyVLM held-out samples, or a tiny random model with the unpruned answers as labels.

    The vision tower runs here once per batch, so that evaluations time the language model.
    """
    try:
        from reference_impls.common.toyvlm import load_toyvlm

        toy = load_toyvlm()
    except (ImportError, FileNotFoundError):
        toy = None
    if toy is not None:
        samples = toy.samples(n, seed=seed)
        batches = []
        for start in range(0, n, batch_size):
            chunk = samples[start : start + batch_size]
            answers = torch.tensor([toy.vocab.id(s.qa.answer) for s in chunk])
            batches.append((_encode_once(toy.model, toy.collate(chunk)), answers))
        return Data(toy.model, batches, torch.tensor(toy.answer_ids), "toyvlm")
    from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

    model = tiny_qwen25vl(seed=0, num_layers=4)
    batches = []
    for index in range(max(2, n // 8)):
        inputs = tiny_inputs(model, grids=((16, 16),), prompt_before=8, prompt_after=1, seed=seed + index, batch_size=1)
        with torch.no_grad():
            answers = model(**inputs).logits[:, -1].argmax(-1)
        batches.append((_encode_once(model, inputs), answers))
    return Data(model, batches, None, "tiny-random")


def evaluate(data: Data, method: Callable | None) -> dict[str, float]:
    """Accuracy, visual tokens kept (final and layer mean) and LLM prefill ms per sample.

    The vision features are precomputed by :func:`load_data`, so the time is the language
    model's prefill (what these methods shorten), selection overhead included.
    """
    correct = total = 0
    seconds = 0.0
    stats: dict = {}
    context = method(data.model) if method is not None else None
    if context is not None:
        context.__enter__()
    try:
        for inputs, answers in data.batches:
            start = time.perf_counter()
            with torch.no_grad():
                logits = data.model(**inputs, use_cache=True).logits[:, -1]  # the prefill
            seconds += time.perf_counter() - start
            if data.answer_ids is not None:
                prediction = data.answer_ids[logits[:, data.answer_ids].argmax(-1)]
            else:
                prediction = logits.argmax(-1)
            correct += int((prediction == answers).sum())
            total += answers.numel()
            stats = dict(getattr(method, "stats", {}) or {})
    finally:
        if context is not None:
            context.__exit__(None, None, None)
    ids = data.batches[0][0]["input_ids"][0]
    config = data.model.config
    visual_in = stats.get("visual_in", int(adapter_for(config).visual_mask(ids, config).sum()))
    return {
        "accuracy": 100.0 * correct / total,
        "visual_in": visual_in,
        "visual_kept": stats.get("visual_kept", visual_in),
        "visual_kept_layer_mean": stats.get("visual_kept_layer_mean", stats.get("visual_kept", visual_in)),
        "prefill_ms": 1000.0 * seconds / total,
    }


def method_factories(num_layers: int) -> dict[str, tuple[str, Callable[[float], Any]]]:
    """name -> (family, budget -> method) for the sweep."""
    from reference_impls.common.random_pruning import RandomPruning
    from reference_impls.prefilling.block_sparse import BlockSparseAttention
    from reference_impls.prefilling.divprune import DivPrune
    from reference_impls.prefilling.fastv import FastV
    from reference_impls.prefilling.pyramiddrop import PyramidDrop
    from reference_impls.prefilling.sparsevlm import SparseVLM
    from reference_impls.prefilling.trim import TRIM
    from reference_impls.prefilling.vision_selector import VisionSelector

    k = max(1, num_layers // 4)
    return {
        "fastv": ("prefilling-attention-guided", lambda b: FastV(budget=b, layer=k)),
        "pyramiddrop": ("prefilling-attention-guided", lambda b: PyramidDrop(budget=b)),
        "pyramiddrop+renumber": ("prefilling-attention-guided", lambda b: PyramidDrop(budget=b, positions="renumber")),
        "sparsevlm": ("prefilling-attention-guided", lambda b: SparseVLM(budget=b)),
        "sparsevlm-norecycle": ("prefilling-attention-guided", lambda b: SparseVLM(budget=b, recycle=False)),
        "sparsevlm+renumber": ("prefilling-attention-guided", lambda b: SparseVLM(budget=b, positions="renumber")),
        "divprune": ("prefilling-diversity-guided", lambda b: DivPrune(budget=b)),
        "trim": ("prefilling-question-guided", lambda b: TRIM(budget=b)),
        "trim+similar": ("prefilling-question-guided", lambda b: TRIM(budget=b, negate=False)),
        "vision-selector": ("prefilling-learned", lambda b: VisionSelector(budget=b)),
        "block-sparse": ("sparse-attention", lambda b: BlockSparseAttention(budget=b, block_size=16)),
        "random@0": ("", lambda b: RandomPruning(budget=b)),
        f"random@{k}": ("", lambda b: RandomDrop(budget=b, layer=k)),
    }


def sweep(data: Data, budgets: tuple[float, ...], names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per (method, budget), plus the unpruned model; methods interleaved per budget."""
    num_layers = len(adapter_for(data.model).language_layers(data.model))
    factories = method_factories(num_layers)
    names = names or tuple(factories)
    evaluate(data, None)  # warm-up
    rows = [{"method": "none", "family": "", "budget": 1.0, **evaluate(data, None)}]
    for budget in budgets:
        for name in names:
            family, factory = factories[name]
            rows.append({"method": name, "family": family, "budget": budget, **evaluate(data, factory(budget))})
    return rows


def sparse_cost(
    lengths: tuple[int, ...] = (1024, 2048, 4096),
    budgets: tuple[float, ...] = (0.5, 0.2, 0.05),
    block_size: int = 64,
    heads: int = 8,
    kv_heads: int = 2,
    dim: int = 64,
    repeats: int = 2,
) -> list[dict[str, Any]]:
    """Attention-only prefill cost: block-sparse (pattern + blocks) vs dense causal sdpa.

    Random post-RoPE q/k/v for one layer; 32 text tokens before and after a visual span.
    """
    import torch.nn.functional as F

    from reference_impls.prefilling.block_sparse import block_pattern, block_sparse_attention

    def best_ms(run: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return 1000 * best

    rows = []
    generator = torch.Generator().manual_seed(0)
    for n in lengths:
        q = torch.randn(1, heads, n, dim, generator=generator)
        k, v = (torch.randn(1, kv_heads, n, dim, generator=generator) for _ in range(2))
        visual = torch.ones(1, n, dtype=torch.bool)
        visual[:, :32] = visual[:, -32:] = False
        dense = best_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        rows.append(
            {
                "method": "sdpa (dense)",
                "tokens": n,
                "budget": 1.0,
                "density": 1.0,
                "attention_ms": dense,
                "speedup": 1.0,
            }
        )
        for budget in budgets:
            pattern = block_pattern(q, k, visual, block_size=block_size, budget=budget)
            nb = pattern.shape[1]
            density = float(pattern.sum()) / (nb * (nb + 1) / 2)

            def sparse():
                p = block_pattern(q, k, visual, block_size=block_size, budget=budget)
                return block_sparse_attention(q, k, v, p, block_size=block_size, scaling=dim**-0.5)

            ms = best_ms(sparse)
            rows.append(
                {
                    "method": "block-sparse",
                    "tokens": n,
                    "budget": budget,
                    "density": density,
                    "attention_ms": ms,
                    "speedup": dense / ms,
                }
            )
    return rows


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """The sweep as a fixed-width table."""
    for row in rows:
        print(
            f"{row['method']:>18} budget {row['budget']:.2f}  acc {row['accuracy']:5.1f}%  kept {row['visual_kept']:>4}/{row['visual_in']}"
            f"  layer-mean {row['visual_kept_layer_mean']:7.1f}  LLM prefill {row['prefill_ms']:6.1f} ms/sample"
        )


def chat_sweep(
    names: tuple[str, ...], budgets: tuple[float, ...], n: int = 16, seed: int = 1, suite: str = "short"
) -> list[dict[str, Any]]:
    """The named methods at each budget on ``n`` held-out samples of ToyVLM v2's ``suite`` drawn from
    one ``seed`` (default the tuning seed, never reported), with :func:`run_chat`'s per-sample
    protocol: rows shaped like a committed results file's, without intervals. For notebooks."""
    from reference_impls.bench import tokens
    from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

    bundle = load_toyvlm_v2()
    factories = method_factories(len(adapter_for(bundle.model).language_layers(bundle.model)))
    specs = {name: tokens.Factory(*factories[name]) for name in names}
    return tokens.evaluate_seed(bundle, specs, list(names), n, budgets, seed, suite)


def plot_chat(rows: list[dict[str, Any]], methods: tuple[str, ...], title: str = ""):
    """Exact match (with its 95% interval when the rows have one) and LLM prefill time vs budget for
    ``methods``, the unpruned model dashed: the same plot for a live :func:`chat_sweep` and for the
    rows of a committed ``prefilling-toyvlm-v2-*`` results file."""
    import matplotlib.pyplot as plt

    from reference_impls.bench.tokens import UNPRUNED

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in methods:
        points = sorted((r for r in rows if r["method"] == name), key=lambda r: r["budget"])
        budgets = [r["budget"] for r in points]
        style = ":" if name.startswith("random") else "-"
        errors = [r.get("accuracy_ci") or 0.0 for r in points]
        axes[0].errorbar(
            budgets, [r["accuracy"] for r in points], yerr=errors, ls=style, marker="o", capsize=3, label=name
        )
        axes[1].plot(budgets, [r["llm_prefill_ms"] for r in points], style, marker="o", label=name)
    for row in rows:
        if row["method"] == UNPRUNED:
            axes[0].axhline(row["accuracy"], color="k", ls="--", lw=0.8, label="all tokens")
            axes[1].axhline(row["llm_prefill_ms"], color="k", ls="--", lw=0.8, label="all tokens")
    axes[0].set(xlabel="budget (fraction of visual tokens kept)", ylabel="exact match (%)", xscale="log")
    axes[1].set(xlabel="budget", ylabel="LLM prefill ms / sample", xscale="log")
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def print_chat(rows: list[dict[str, Any]], methods: tuple[str, ...] | None = None) -> None:
    """ToyVLM v2 rows (live or committed) as a fixed-width table, the unpruned row first."""
    from reference_impls.bench.tokens import UNPRUNED

    for row in rows:
        if methods is not None and row["method"] not in (UNPRUNED, *methods):
            continue
        interval = f" +- {row['accuracy_ci']:4.1f}" if row.get("accuracy_ci") is not None else ""
        print(
            f"{row['method']:>20} budget {row['budget']:.2f}  exact match {row['accuracy']:5.1f}%{interval}"
            f"  visual tokens {row['visual_tokens']:6.1f}  LLM prefill {row['llm_prefill_ms']:6.1f} ms"
        )


def plot_token_scores(scores: torch.Tensor, relevant: set[int], question: str, label: str):
    """For a notebook: one sample's per-visual-token scores in prompt order, with the tokens that
    show what the question asks about marked (:func:`~reference_impls.common.chat_scenes.evidence_tokens`)."""
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(9, 2.5))
    plt.plot(scores.numpy(), lw=0.6, label=label)
    marked = sorted(relevant)
    plt.scatter(marked, scores[marked].numpy(), c="C3", s=12, label="relevant object's tokens")
    plt.xlabel("visual token (16 images of 64, prompt order)")
    plt.title(question, fontsize=9)
    plt.legend(fontsize=8)
    return figure


COMMITTED = "prefilling-toyvlm-v2-short"
"""The committed ToyVLM v2 results of ``python -m reference_impls.prefilling.bench --suite short``."""


def show_committed(methods: tuple[str, ...], title: str, pairs: tuple[tuple[str, str], ...] = ()):
    """For a notebook: the committed short-suite results of ``methods`` (the command, the table, the
    file's paired tests that name one of them, and :func:`plot_chat`), plus seed-by-seed comparisons
    of each ``(method, other)`` in ``pairs`` at every budget, from the per-seed values the file keeps
    (:func:`~reference_impls.common.seeded.compare_rows`). Returns the figure."""
    from reference_impls.common.results import RESULTS_DIR, load_results
    from reference_impls.common.seeded import compare_rows

    results = load_results(RESULTS_DIR / f"{COMMITTED}.json")
    print(results.command)
    print_chat(results.rows, methods)
    for row in load_results(RESULTS_DIR / f"{COMMITTED}-tests.json").rows:
        if row["versus"] in methods and (row["method"] in methods or row["method"] == BASELINE):
            print(row["verdict"])
    by_setting = {(row["method"], row["budget"]): row for row in results.rows}
    for method, other in pairs:
        for budget in CHAT_BUDGETS:
            print(f"budget {budget}: {compare_rows(by_setting[method, budget], by_setting[other, budget]).verdict}")
    return plot_chat(results.rows, methods, title)


METRICS = ("accuracy", "visual_kept", "visual_kept_layer_mean", "prefill_ms")
BASELINE = "random@0"
ABLATIONS = {
    "pyramiddrop": ("pyramiddrop+renumber",),
    "sparsevlm": ("sparsevlm+renumber", "sparsevlm-norecycle"),
    "trim": ("trim+similar",),
}
"""Defaults tested against their variants (renumbered positions, no recycling, TRIM's sign), besides random pruning."""
COMPARATORS = ("random@0",)
"""Rows a ``--methods`` run adds to the methods it names, so that it carries its own comparators (the
unpruned model is always the first row)."""
TUNING_SEEDS = (1,)
"""Seed of the single-seed runs the methods' settings were developed on; never reported."""


CHAT_BUDGETS = (0.5, 0.25, 0.1)
"""Budgets of ToyVLM v2 runs (the unpruned model is the budget-1.0 row)."""


def run_chat(
    suite: str,
    n: int = 20,
    budgets: tuple[float, ...] = CHAT_BUDGETS,
    checkpoint: str | None = None,
    seeds=None,
    names: tuple[str, ...] | None = None,
    log=print,
    tag: str = "",
):
    """Every prefilling method at every budget on ToyVLM v2's ``suite``: the tokens bench's
    per-sample protocol (:func:`reference_impls.bench.tokens.sweep_chat`: the reply decoded until
    ``<eos>`` through the method, exact match, per scope, LLM prefill and decode times, batch 1).
    Returns the :class:`Results` (not yet saved) and the paired tests against random pruning and
    of PyramidDrop, SparseVLM and TRIM against their variants. ``tag`` (a ``--methods`` run) is
    appended to the results id, so that a run of a few methods never overwrites the full table."""
    from reference_impls.bench import tokens
    from reference_impls.common import seeded
    from reference_impls.common.results import Plot, Results, results_id
    from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

    seeds = seeds or seeded.Seeds(seeded.REPORTED, TUNING_SEEDS)
    bundle = load_toyvlm_v2(checkpoint)
    factories = method_factories(len(adapter_for(bundle.model).language_layers(bundle.model)))
    specs = {name: tokens.Factory(family, make) for name, (family, make) in factories.items()}
    names = list(names or specs)
    rows, per_seed, seconds = tokens.sweep_chat(bundle, suite, specs, names, n, budgets, seeds, log)
    tests = seeded.paired_tests(per_seed, "accuracy", BASELINE, within=("budget",)) if BASELINE in names else []
    for reference, variants in ABLATIONS.items():
        if reference in names and set(variants) <= set(names):
            tests += seeded.paired_tests(per_seed, "accuracy", reference, within=("budget",), versus=variants)
    result_id = results_id("prefilling-toyvlm-v2", suite, *([tag] if tag else []))
    families = sorted({specs[name].family for name in names if specs[name].family})
    results = Results(
        id=result_id,
        title=f"Prefilling-stage visual token pruning on ToyVLM v2 ({suite} suite): exact match and cost vs budget",
        command="",
        families=families,
        columns=seeded.interval_columns(tokens.columns(chat=True), ("accuracy",)),
        rows=rows,
        plots=[
            Plot(x="budget", y="accuracy", group="method", title="Exact match vs visual budget", error="accuracy_ci"),
            Plot(x="budget", y="llm_prefill_ms", group="method", title="LLM prefill time vs visual budget"),
        ],
        notes=tokens.chat_notes(bundle, suite, seeds, n, seconds)
        + "Every method's exact match is compared with random pruning before the LLM (random@0) at the same "
        f"budget, and PyramidDrop, SparseVLM and TRIM (when run) with their variants, paired by seed ({result_id}-tests). "
        "Budget = "
        "fraction of visual tokens left after the last pruning stage; for block-sparse the fraction of causal "
        "key blocks a visual query block reads (no token is dropped). '+renumber' rows use upstream's "
        "renumbered positions, 'sparsevlm-norecycle' turns SparseVLM's token recycling off, 'trim+similar' keeps the "
        "visual tokens most similar to the question (TRIM's code negates the similarity).",
        seeds=seeds.record(),
    )
    return results, tests


def main(argv: list[str] | None = None) -> None:
    import argparse

    from reference_impls.common import seeded
    from reference_impls.common.chat_scenes import SUITES
    from reference_impls.common.results import Column, Plot, Results, command_line, save_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="held-out samples drawn per seed")
    parser.add_argument("--quick", action="store_true", help="8 samples on two seeds, no results files")
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help="run on ToyVLM v2's held-out suite (default: ToyVLM v1)"
    )
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder (with --suite)")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated method names (with --suite), plus the random@0 comparator and the unpruned model; "
        "the results id gets the suffix --tag",
    )
    parser.add_argument("--tag", default=None, help="results id suffix of a --methods run (default: the first method)")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    if args.methods is not None and args.suite is None:
        parser.error("--methods needs --suite")
    if args.suite is not None:
        torch.set_num_threads(1)
        names, tag = None, ""
        if args.methods is not None:
            chosen = [name.strip() for name in args.methods.split(",") if name.strip()]
            known = method_factories(4)
            unknown = [name for name in chosen if name not in known]
            if not chosen or unknown:
                parser.error(f"--methods: unknown {unknown or 'empty list'}; known: {', '.join(known)}")
            names = tuple(dict.fromkeys([*chosen, *COMPARATORS]))
            tag = args.tag or chosen[0]
        results, tests = run_chat(
            args.suite,
            n=8 if args.quick else args.n,
            checkpoint=args.checkpoint,
            seeds=seeds,
            names=names,
            log=print,
            tag=tag,
        )
        results.command = command_line("reference_impls.prefilling.bench", argv)
        if not args.quick:
            reference = f"{BASELINE} (and the PyramidDrop, SparseVLM defaults)"
            for path in seeded.save_seeded(results, tests, seeds, reference, args.out):
                print("wrote", path)
        return
    n = 8 if args.quick else args.n
    torch.set_num_threads(1)
    budgets = (1.0, 0.5, 0.25, 0.1)
    facts: dict = {}

    def one_seed(seed: int) -> list[dict[str, Any]]:
        data = load_data(n=n, batch_size=16, seed=seed)
        facts["source"], facts["n"] = data.source, sum(a.numel() for _, a in data.batches)
        return sweep(data, budgets)

    per_seed, seconds = seeded.run_seeds(one_seed, seeds.reported, log=lambda *a: print(*a, flush=True))
    rows = seeded.summarise(per_seed, ("method", "budget"), METRICS)
    print_sweep(rows)
    tests = seeded.paired_tests(per_seed, "accuracy", BASELINE, within=("budget",))
    for reference, variants in ABLATIONS.items():  # each default against its own variants
        tests += seeded.paired_tests(per_seed, "accuracy", reference, within=("budget",), versus=variants)
    command = command_line("reference_impls.prefilling.bench", argv)
    results = Results(
        id="prefilling-toyvlm",
        ablation=facts["source"] == "toyvlm",
        title=f"Prefilling-stage visual token pruning on {_model_title(facts['source'])}: accuracy and prefill time vs budget",
        command=command,
        families=["prefilling-attention-guided", "prefilling-diversity-guided", "sparse-attention"],
        columns=seeded.interval_columns(
            [
                Column("method", "Method"),
                Column("budget", "Budget", digits=2),
                Column("visual_in", "Visual tokens in"),
                Column("accuracy", "Accuracy", "%", 1),
                Column("visual_kept", "Visual tokens kept (last layer)"),
                Column("visual_kept_layer_mean", "Kept, layer mean", digits=1),
                Column("prefill_ms", "LLM prefill", "ms/sample", 1),
            ],
            ("accuracy",),
        ),
        rows=rows,
        plots=[
            Plot(x="budget", y="accuracy", group="method", title="Accuracy vs visual budget", error="accuracy_ci"),
            Plot(
                x="budget",
                y="prefill_ms",
                group="method",
                title="LLM prefill time (vision tower excluded) vs visual budget",
            ),
        ],
        notes=(
            f"Data: {facts['source']}. Each of {len(seeds.reported)} reported seeds "
            f"({', '.join(map(str, seeds.reported))}) draws its own {facts['n']} held-out samples, shared by every "
            "method; mean over seeds with the half-width of a Student-t 95% interval "
            f"({sum(seconds) / len(seconds):.0f} s per seed); the settings were developed on seed "
            f"{', '.join(map(str, seeds.tuning))}, not reported. Every method's accuracy is compared with random "
            "pruning before the LLM (random@0) at the same budget, and PyramidDrop and SparseVLM with their variants, "
            "paired by seed (prefilling-toyvlm-tests). "
            "Batch 16 (left-padded), 1 thread, "
            "shared CPU (timings noisy); prefill = language model only (vision features precomputed). Budget = fraction of visual tokens left after the last pruning stage; for block-sparse it is the "
            "fraction of causal key blocks a visual query block reads (no token is dropped). "
            "Defaults follow the authors' code except positions (kept M-RoPE); '+renumber' rows use upstream's "
            "renumbered positions, 'sparsevlm-norecycle' turns SparseVLM's token recycling off (its default "
            "adds the recycled cluster tokens on top of the budget)."
        ),
    )
    if args.quick:  # a smoke run writes nothing
        return
    for path in seeded.save_seeded(
        results, tests, seeds, f"{BASELINE} (and the PyramidDrop, SparseVLM defaults)", args.out
    ):
        print("wrote", path)
    cost = sparse_cost()
    for row in cost:
        print(
            f"{row['method']:>14} n {row['tokens']:>5} budget {row['budget']:.2f} density {row['density']:.2f}"
            f"  attention {row['attention_ms']:7.1f} ms  x{row['speedup']:.2f}"
        )
    save_results(
        Results(
            id="block-sparse-cost",
            title="Block-sparse vs dense causal sdpa: one attention layer's prefill cost (8 query / 2 KV heads, head dim 64)",
            command=command,
            families=["sparse-attention"],
            columns=[
                Column("method", "Method"),
                Column("budget", "Budget", digits=2),
                Column("tokens", "Prompt tokens"),
                Column("density", "Blocks computed", digits=2),
                Column("attention_ms", "Attention", "ms", 1),
                Column("speedup", "Speed-up", digits=2),
            ],
            rows=cost,
            plots=[Plot(x="density", y="attention_ms", group="tokens", title="Attention time vs density")],
            notes=(
                "CPU, 1 thread, shared machine; best of 2 runs; block 64; the sparse time includes building the pattern. The sparse "
                "path is a Python loop over query blocks calling sdpa on gathered keys (no kernel)."
            ),
        ),
        args.out,
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
