"""Object-hallucination mitigation families compared on the biased ToyVLM captioner.

``python -m reference_impls.hallucination.compare`` loads the committed captioner (it names
B = "square" on most scenes that show A = "circle" without B) and measures, per reported seed
on that seed's own held-out evaluation set,

- decode-time methods on the unchanged model: visual contrastive decoding
  (:mod:`.contrastive_decoding`), PAI-style attention amplification
  (:mod:`.attention_intervention`), a steering vector at a few strengths
  (:mod:`.representation_steering`, fitted on a held-out split) and self-check post-hoc
  correction (:mod:`.post_hoc_correction`);
- training-based methods from the same data and data order per seed: DPO
  (:mod:`.preference_optimization`), grounded instruction tuning (:mod:`.grounded_tuning`) and,
  from the unlearning family, GA, NPO and SARE (:mod:`.bench` data, rho calibrated as there),
  each also after the relearning attack of :mod:`.robustness` at one budget, next to the
  never-unlearned captioner relearned with the same budget -- and VCD applied to that relearned
  captioner (a decode-time method is re-applied at inference, so it is not "relearned away").

Metrics (percent): targeted hallucination rate (captions naming B on A-without-B scenes),
CHAIR_s / CHAIR_i over trigger and clean scenes, object recall, clean-caption object F1 and
exact-caption rate (quality), POPE F1. Each row is the mean over the reported seeds with a
Student-t 95% interval; every method is compared with the base captioner under the same
condition by paired tests over seeds (:mod:`reference_impls.common.seed_stats`). Prints a table
and writes ``reference_impls/results/hallucination-mitigation.json`` and
``hallucination-mitigation-tests.json``; ``--quick`` is a smoke run (no file).

Seeds: the decode-time settings (VCD alpha/beta/noise, PAI alpha, steering layer and strengths)
were picked in small exploratory runs with seeds 0 and 1 on the evaluation set of seed 7
(:data:`TUNING_SEEDS`, :data:`TUNING_EVAL_SEED`), SARE's rho and the steering vector come from the
calibration split (seed 99); the reported seeds (10-15 by default: a seed costs more than 3
minutes, and 6 is the fewest with which a sign test can reach p < 0.05) draw their own evaluation
scenes (:func:`eval_seed`) and never overlap those. Training budgets are equal (60 steps, batch
16) except SARE, which costs about 1.5x per step.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from reference_impls.common import seeded
from reference_impls.common.results import Column, Plot, Results, command_line, paired_tests_results, save_results
from reference_impls.common.seed_stats import interval_fields, paired_rows

from .attention_intervention import VisualAttentionAmplification
from .bench import CALIBRATION_SEED, BenchConfig, make_data
from .captioner import build_splits, evaluate_captioner, make_eval_set
from .contrastive_decoding import VisualContrastiveDecoding
from .gradient_ascent import GradientAscent
from .grounded_tuning import GroundedInstructionTuning
from .npo import NPO
from .post_hoc_correction import SelfCheckCorrection
from .preference_optimization import HallucinationDPO, preference_batch
from .representation_steering import SteeringVector
from .robustness import relearn
from .sare import SARE, SAMConfig, calibrate_rho
from .train_captioner import load_captioner

__all__ = ["CompareConfig", "run", "aggregate", "paired_tests", "eval_seed", "FAMILIES"]

TUNING_SEEDS = (0, 1)
"""Seeds of the exploratory runs that picked the decode-time settings; never reported."""
TUNING_EVAL_SEED = 7
"""Scene seed of the evaluation set those runs used (``make_eval_set``'s default)."""

FAMILIES = [
    "contrastive-decoding",
    "attention-intervention",
    "preference-optimization",
    "post-hoc-correction",
    "representation-steering",
    "grounded-instruction-tuning",
    "hallucination-unlearning",
]
METRICS = ("hal_rate", "chair_s", "chair_i", "recall", "clean_f1", "clean_exact", "pope_f1")


def eval_seed(seed: int) -> int:
    """Scene seed of a reported seed's evaluation set (its trigger scenes; clean scenes use +1).

    Chosen clear of every other scene seed the benchmarks draw: training (0), evaluation while
    tuning (7, 8), forget splits (100 + s), relearning sets (200 + s) and calibration (99).
    """
    return 500 + 2 * seed


@dataclass
class CompareConfig:
    seeds: tuple[int, ...] = (10, 11, 12, 13, 14, 15)
    steps: int = 60
    batch: int = 16
    n_forget: int = 256
    n_eval: int = 100
    relearn_steps: int = 10
    relearn_lr: float = 5e-4
    vcd: tuple[dict, ...] = ({"alpha": 1.0, "mode": "noise"}, {"alpha": 1.0, "mode": "mask", "mask_ratio": 1.0})
    pai_alpha: tuple[float, ...] = (0.5, 1.0)
    pai_guidance: float | None = 1.1
    """PAI's logits refinement (upstream's README value), added to the first ``pai_alpha`` (None: no row)."""
    steer_layer: int = 1
    steer_strengths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    rhos: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)


def _row(
    method: str, family: str, setting: str, condition: str, scores: dict, seed: int | None, seconds: float | None = None
) -> dict:
    return {
        "method": method,
        "family": family,
        "setting": setting,
        "condition": condition,
        "seed": seed,
        "seconds": seconds,
        **{k: scores[k] for k in METRICS},
    }


def _setting(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def run(config: CompareConfig, log=print) -> tuple[list[dict], dict]:
    """All methods and seeds; returns per-seed rows and run facts."""
    base, vocab, world, _ = load_captioner()
    base.model.visual.requires_grad_(False)  # training-based methods train the language model only
    rows: list[dict] = []

    def timed(name, family, setting, fn, seed, condition="applied"):
        start = time.time()
        scores = fn()
        rows.append(_row(name, family, setting, condition, scores, seed, time.time() - start))
        log(
            f"{name:22s} {setting:28s} {condition:9s} hal {scores['hal_rate']:5.1f} CHAIR_i {scores['chair_i']:5.1f} F1 {scores['clean_f1']:5.1f} exact {scores['clean_exact']:5.1f} POPE {scores['pope_f1']:5.1f} ({time.time() - start:.1f}s)"
        )

    # -- fitted once, on the calibration split (seed 99) -------------------------------------
    held_out = build_splits(base, vocab, world, n=64, seed=CALIBRATION_SEED)
    pairs = preference_batch(held_out, list(range(len(held_out["scenes"]))), vocab, base.config, world)
    steer = SteeringVector(layer=config.steer_layer).fit(base, pairs["chosen"], pairs["rejected"])
    bench = BenchConfig(steps=config.steps, batch=config.batch, n_forget=config.n_forget, rhos=config.rhos)
    _, calib_batches, _ = make_data(base, vocab, world, replace(bench, n_forget=64), seed=CALIBRATION_SEED)
    torch.manual_seed(CALIBRATION_SEED)
    rho, sweep = calibrate_rho(SARE(beta=0.5, lr=5e-4), base, calib_batches, config.steps, rhos=config.rhos)
    log(f"SARE rho calibration -> {rho}")
    grounded = GroundedInstructionTuning(steps=config.steps, batch=config.batch)

    for seed in config.seeds:
        eval_set = make_eval_set(world, config.n_eval, config.n_eval, seed=eval_seed(seed))
        evaluate = lambda model, captioner=None, eval_set=eval_set: evaluate_captioner(
            model, vocab, world, eval_set, captioner=captioner
        )
        # -- decode-time methods on the unchanged model --------------------------------------
        timed("base", "", "greedy", lambda: evaluate(base), seed)
        for kw in config.vcd:
            with VisualContrastiveDecoding(**kw)(base):
                timed("vcd", "contrastive-decoding", _setting(kw), lambda: evaluate(base), seed)
        for alpha in config.pai_alpha:
            with VisualAttentionAmplification(alpha=alpha, start_layer=0)(base):
                timed("pai", "attention-intervention", f"alpha={alpha}, all layers", lambda: evaluate(base), seed)
        if config.pai_guidance is not None:
            alpha, gamma = config.pai_alpha[0], config.pai_guidance
            with VisualAttentionAmplification(alpha=alpha, start_layer=0, guidance=gamma)(base):
                setting = f"alpha={alpha}, all layers, guidance {gamma}"
                timed("pai", "attention-intervention", setting, lambda: evaluate(base), seed)
        timed(
            "self-check-correction",
            "post-hoc-correction",
            "yes/no self-verification",
            lambda: evaluate(base, SelfCheckCorrection().captioner(world.shapes)),
            seed,
        )
        for strength in config.steer_strengths:
            with replace(steer, strength=strength)(base):
                setting = f"layer {config.steer_layer}, strength {strength}"
                timed("steering", "representation-steering", setting, lambda: evaluate(base), seed)

        # -- training-based methods, paired data per seed ------------------------------------
        splits, batches, attack = make_data(base, vocab, world, bench, seed)
        n = len(splits["scenes"])

        def dpo_batches(step: int, splits=splits, batches=batches, seed=seed) -> dict:
            rng = np.random.default_rng([seed, 77, step])
            index = rng.choice(n, size=min(config.batch, n), replace=False).tolist()
            return {
                "preference": preference_batch(splits, index, vocab, base.config, world),
                "retain": batches(step)["retain"],
            }

        trainers = {
            "dpo": (
                "preference-optimization",
                "beta 0.5, + chosen NLL + retain",
                lambda m: HallucinationDPO(beta=0.5, steps=config.steps).train(m, dpo_batches),
            ),
            "grounded-tuning": (
                "grounded-instruction-tuning",
                "balanced truthful data",
                lambda m: grounded.train(m, grounded.batches(world, vocab, base.config, seed)),
            ),
            "ga": (
                "hallucination-unlearning",
                "GA + retain, lr 1e-4",
                lambda m: GradientAscent(lr=1e-4).unlearn(m, batches, steps=config.steps),
            ),
            "npo": (
                "hallucination-unlearning",
                "NPO + retain, beta 0.5",
                lambda m: NPO(beta=0.5, lr=5e-4).unlearn(m, batches, steps=config.steps),
            ),
            "sare": (
                "hallucination-unlearning",
                f"NPO + targeted SAM, rho {rho}",
                lambda m: SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=rho)).unlearn(m, batches, steps=config.steps),
            ),
        }
        budget = (config.relearn_steps,)
        attacked = lambda m, evaluate=evaluate, attack=attack: relearn(
            m, attack, checkpoints=budget, lr=config.relearn_lr, evaluate=evaluate
        )[0]
        # Decode-time methods keep working on a relearned model: VCD on the attacked base.
        on_attacked: dict[str, tuple[dict, float]] = {}

        def probe(model, evaluate=evaluate) -> dict:
            for kw in config.vcd:
                start = time.time()
                with VisualContrastiveDecoding(**kw)(model):
                    on_attacked[_setting(kw)] = (evaluate(model), time.time() - start)
            return evaluate(model)

        timed(
            "base",
            "",
            "greedy",
            lambda: relearn(base, attack, checkpoints=budget, lr=config.relearn_lr, evaluate=probe)[0],
            seed,
            "relearned",
        )
        for setting, (scores, seconds) in on_attacked.items():
            timed("vcd", "contrastive-decoding", setting, lambda: scores, seed, "relearned")
            rows[-1]["seconds"] = seconds
        for name, (family, setting, train) in trainers.items():
            torch.manual_seed(seed)
            model = copy.deepcopy(base)
            start = time.time()
            train(model)
            seconds = time.time() - start
            timed(name, family, setting, lambda: evaluate(model), seed)
            rows[-1]["seconds"] = seconds
            timed(name, family, setting, lambda: attacked(model), seed, "relearned")
    return rows, {"rho": rho, "rho_sweep": sweep}


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean over seeds with a 95% confidence interval per (method, setting, condition)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["setting"], row["condition"]), []).append(row)
    out = []
    for (method, setting, condition), members in groups.items():
        agg = {
            "method": method,
            "family": members[0]["family"],
            "setting": setting,
            "condition": condition,
            "seeds": len(members),
        }
        for key in METRICS:
            agg.update(interval_fields(key, [m[key] for m in members]))
        agg["seconds"] = round(float(np.mean([m["seconds"] for m in members])), 1)
        out.append(agg)
    return out


def _label(row: dict) -> str:
    return f"{row['method']} ({row['setting']})" if row["setting"] and row["method"] != "base" else row["method"]


def paired_tests(rows: list[dict]) -> list[dict]:
    """Every method against the base captioner under the same condition, paired by seed:
    hallucination rate (lower is better) and clean-caption F1."""
    out = []
    for condition in ("applied", "relearned"):
        selected = sorted((r for r in rows if r["condition"] == condition), key=lambda r: r["seed"])
        for key, higher in (("hal_rate", "hallucinates more"), ("clean_f1", "higher clean F1")):
            per_seed: dict[str, list[float]] = {}
            for row in selected:
                per_seed.setdefault(_label(row), []).append(row[key])
            if len(per_seed.get("base", [])) > 1:
                out += paired_rows(f"{key} ({condition})", per_seed, "base", "", higher)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hallucination mitigation families on the biased captioner")
    parser.add_argument("--quick", action="store_true", help="one seed, short training (smoke test, no results file)")
    seeded.seed_arguments(parser, CompareConfig.seeds)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Seeds refuses reported seeds that were used for tuning or calibration
    seeds = seeded.seeds_from_args(args, (*TUNING_SEEDS, CALIBRATION_SEED), CompareConfig.seeds)
    config = CompareConfig(seeds=seeds.reported)
    if args.quick:
        config = replace(
            config,
            seeds=config.seeds[:1],
            steps=5,
            n_eval=40,
            n_forget=64,
            relearn_steps=3,
            rhos=(0.03,),
            steer_strengths=(2.0,),
            pai_alpha=(1.0,),
        )
    start = time.time()
    rows, facts = run(config)
    table = aggregate(rows)
    print(
        f"\n{'method':22s} {'setting':32s} {'cond':9s} {'N':>2s} {'hal %':>12s} {'CHAIR_s':>7s} {'CHAIR_i':>7s} {'F1':>6s} {'exact':>6s} {'POPE F1':>7s}"
    )
    for r in table:
        print(
            f"{r['method']:22s} {r['setting']:32s} {r['condition']:9s} {r['seeds']:2d} {r['hal_rate']:5.1f}±{r['hal_rate_ci'] or 0:5.1f} {r['chair_s']:7.1f} {r['chair_i']:7.1f} {r['clean_f1']:6.1f} {r['clean_exact']:6.1f} {r['pope_f1']:7.1f}"
        )
    tests = paired_tests(rows)
    for test in tests:
        print(f"{test['metric']}: {test['verdict']}")
    wall = time.time() - start
    print(f"total {wall:.0f}s")
    if args.quick:
        return
    columns = [
        Column("method", "Method"),
        Column("setting", "Setting"),
        Column("condition", "Condition"),
        Column("hal_rate", "Hallucinated-object rate", "%", 1),
        Column("hal_rate_ci", "± 95% CI", "%", 1),
        Column("chair_s", "CHAIR_s", "%", 1),
        Column("chair_i", "CHAIR_i", "%", 1),
        Column("recall", "Object recall", "%", 1),
        Column("clean_f1", "Clean-caption object F1", "%", 1),
        Column("clean_f1_ci", "± 95% CI", "%", 1),
        Column("clean_exact", "Exact clean captions", "%", 1),
        Column("pope_f1", "POPE F1", "%", 1),
        Column("seconds", "Seconds (train or eval)", "s", 1),
        Column("seeds", "Seeds", digits=0),
    ]
    notes = (
        f"Biased ToyVLM-scene captioner (A='circle' nearly always with B='square', annotator bias in captions and yes/no answers). "
        f"{len(config.seeds)} reported seeds; each draws its own evaluation set ({config.n_eval} A-without-B scenes and {config.n_eval} ordinary scenes, scene seed 500 + 2 x seed), POPE on random probes plus 'is there a square?' on every trigger scene, and its own training data order. "
        f"Mean over seeds with the half-width of a Student-t 95% confidence interval. "
        f"Decode-time rows use the unchanged model; their settings were picked in exploratory runs on tuning seeds {list(TUNING_SEEDS)} with the evaluation set of scene seed {TUNING_EVAL_SEED}, never on a reported seed. "
        f"Training rows: {config.steps} steps, batch {config.batch}, language model trained, vision frozen; SARE rho calibrated on the calibration split (seed {CALIBRATION_SEED}) as in the unlearning benchmark: {facts['rho']}. "
        f"'relearned': fine-tuned on 32 hallucinated captions for {config.relearn_steps} steps, lr {config.relearn_lr}; the 'base' relearned row is the never-trained captioner with the same budget, and the 'vcd' relearned rows decode that relearned captioner with VCD. "
        f"Seconds: training time for trained rows, evaluation time otherwise; 2 shared CPU cores, noisy. "
        f"Wall time {wall:.0f}s."
    )
    command = command_line("reference_impls.hallucination.compare", argv)
    results = Results(
        id="hallucination-mitigation",
        title="Object-hallucination mitigation families on a biased ToyVLM captioner",
        command=command,
        families=FAMILIES,
        columns=columns,
        rows=table,
        seeds=seeds.record(),
        plots=[
            Plot(
                x="clean_f1",
                y="hal_rate",
                group="method",
                title="Hallucination rate vs clean-caption F1",
                error="hal_rate_ci",
            )
        ],
        notes=notes,
    )
    print(save_results(results))
    tests_file = paired_tests_results(
        "hallucination-mitigation-tests",
        "Hallucination mitigation: every method against the base captioner, paired over seeds",
        command,
        FAMILIES,
        tests,
        seeds.record(),
        "the base captioner",
        "Pairs share the evaluation set and data order of their seed. " + notes,
    )
    print(save_results(tests_file))


if __name__ == "__main__":
    main()
