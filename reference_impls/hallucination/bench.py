"""Hallucination-unlearning benchmark: GA, NPO, EFUF, SARE and controls on the biased captioner.

``python -m reference_impls.hallucination.bench`` loads the committed captioner
(:mod:`.train_captioner`), builds EFUF-style forget / grounded / retain data from its own
captions of trigger scenes (shape A without B), unlearns with every method from the same data
order (paired seeds), then measures each model

- as unlearned: targeted hallucination rate (captions naming B on A-without-B scenes), CHAIR,
  clean-caption object F1, POPE F1, and the worst-case probe (hallucination probability after a
  push of norm 0.1 along the hallucination gradient);
- after the relearning attack (fine-tuning on 32 hallucinated captions for each budget), next
  to the never-unlearned captioner relearned with the same budget;
- under Gaussian weight noise.

It prints a table of mean +- std over seeds and writes
``reference_impls/results/hallucination-unlearning.json``. ``--quick`` is a smoke run.

Deviations / guesses: only the language model is trained (the vision tower is frozen, as LoRA
variants of EFUF/SARE train the LLM); EFUF's CLIP scores are simulated as N(18, 3) per
hallucinated span (below its 23 threshold); rho is calibrated on a held-out forget batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from reference_impls.common.results import Column, Plot, Results, command_line, save_results

from .captioner import CAPTION_PROMPT, build_splits, encode, evaluate_captioner, make_eval_set, retain_batch, split_batch
from .efuf import EFUF
from .gradient_ascent import GradientAscent
from .npo import NPO
from .robustness import gaussian_noise, relearn, worst_case_probe
from .sare import SAMConfig, SARE, calibrate_rho
from .train_captioner import load_captioner

__all__ = ["BenchConfig", "methods", "make_data", "run", "aggregate"]



@dataclass
class BenchConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 60
    batch: int = 16
    n_forget: int = 256
    n_eval: int = 100
    retain_pool: int = 600
    relearn_budgets: tuple[int, ...] = (5, 10, 20, 30)
    relearn_n: int = 32
    relearn_batch: int = 16
    relearn_lr: float = 5e-4
    noise: tuple[float, ...] = (0.1, 0.3)
    rhos: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    push_rho: float = 0.1


def methods(rho: float, steps: int) -> dict[str, tuple[object, int]]:
    """Name -> (method, steps); the controls are untargeted SAM and NPO with SARE's compute."""
    return {
        "ga": (GradientAscent(lr=1e-4), steps),
        "npo": (NPO(beta=0.5, lr=5e-4), steps),
        "efuf": (EFUF(lr=1e-4), steps),
        "sare": (SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=rho)), steps),
        "sare-ga": (SARE(forget="ga", lr=1e-4, sam=SAMConfig(rho=rho)), steps),
        "sam-untargeted": (SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=rho, scope="all")), steps),
        "npo-same-compute": (NPO(beta=0.5, lr=5e-4), int(1.5 * steps)),
    }


def make_data(model, vocab, world, config: BenchConfig, seed: int):
    """Per-seed forget split, retain pool, relearning set and the step -> batches function."""
    splits = build_splits(model, vocab, world, n=config.n_forget, seed=100 + seed)
    retain_pool = world.scenes(config.retain_pool, seed=0)  # the training distribution (seed 0)
    attack_scenes = world.scenes(config.relearn_n, seed=200 + seed, kind="trigger")
    attack_caps = [world.caption(set(s.truth) | {world.b}) for s in attack_scenes]
    n = len(splits["scenes"])

    def batches(step: int) -> dict[str, dict]:
        rng = np.random.default_rng([seed, step])
        index = rng.choice(n, size=min(config.batch, n), replace=False).tolist()
        forget = split_batch(splits, index, vocab, model.config, "forget")
        forget["scores"] = torch.from_numpy(rng.normal(18.0, 3.0, len(index))).float()
        grounded = split_batch(splits, index, vocab, model.config, "grounded")
        retain = retain_batch(world, [retain_pool[i] for i in rng.choice(len(retain_pool), config.batch, replace=False)], vocab, model.config, rng)
        return {"forget": forget, "grounded": grounded, "retain": retain}

    def attack(step: int) -> dict[str, dict]:
        rng = np.random.default_rng([seed, 999, step])
        index = rng.choice(len(attack_scenes), size=config.relearn_batch, replace=False)
        chosen = [attack_scenes[i] for i in index]
        return {"relearn": encode(chosen, [CAPTION_PROMPT] * len(chosen), [attack_caps[i] for i in index], vocab, model.config)}

    return splits, batches, attack


def _measure(name, model, base, vocab, world, eval_set, probe_batch, attack, config, seed) -> list[dict]:
    evaluate = lambda m: evaluate_captioner(m, vocab, world, eval_set)
    rows = [{"method": name, "condition": "unlearned", "relearn_steps": 0, **evaluate(model)}]
    push = worst_case_probe(model, probe_batch, rhos=(config.push_rho,))[0]
    rows[0]["p_hal"], rows[0]["p_hal_push"] = 100 * push["p_target"], 100 * push["p_target_pushed"]
    for row in relearn(model, attack, checkpoints=config.relearn_budgets, lr=config.relearn_lr, evaluate=evaluate):
        rows.append({"method": name, "condition": "relearned", "relearn_steps": row.pop("steps"), **row})
    for alpha in config.noise:
        rows.append({"method": name, "condition": f"noise {alpha}", "relearn_steps": None, **evaluate(gaussian_noise(model, alpha, seed=seed))})
    for row in rows:
        row["seed"] = seed
    return rows


def run(config: BenchConfig, log=print, captioner=None) -> tuple[list[dict], dict]:
    """All seeds; returns the per-seed rows and run facts (rho sweep, timings)."""
    base, vocab, world, manifest = load_captioner(captioner)
    base.model.visual.requires_grad_(False)  # unlearning trains the language model only
    eval_set = make_eval_set(world, config.n_eval, config.n_eval)
    held_out = build_splits(base, vocab, world, n=64, seed=99)
    probe_batch = split_batch(held_out, list(range(min(16, len(held_out["scenes"])))), vocab, base.config, "forget")
    # rho is calibrated where SARE spends most of its steps: at an NPO-unlearned point (at the
    # base model the hallucinated word is already likely, so every rho "saturates").
    _, calib_batches, _ = make_data(base, vocab, world, replace(config, n_forget=64), seed=99)
    calib_model = copy.deepcopy(base)
    NPO(beta=0.5, lr=5e-4).unlearn(calib_model, calib_batches, steps=config.steps)
    rho, sweep = calibrate_rho(SARE(beta=0.5), calib_model, calib_batches(config.steps), rhos=config.rhos)
    log(f"rho calibration: {json.dumps(sweep)} -> rho={rho}")
    rows, timings = [], {}
    for seed in config.seeds:
        splits, batches, attack = make_data(base, vocab, world, config, seed)
        log(f"seed {seed}: {len(splits['scenes'])} hallucinating captions of {config.n_forget} trigger scenes")
        rows += _measure("base", base, base, vocab, world, eval_set, probe_batch, attack, config, seed)
        for name, (method, steps) in methods(rho, config.steps).items():
            torch.manual_seed(seed)
            model = copy.deepcopy(base)
            start = time.time()
            history = method.unlearn(model, batches, steps=steps)
            timings.setdefault(name, []).append(time.time() - start)
            rows += _measure(name, model, base, vocab, world, eval_set, probe_batch, attack, config, seed)
            last = rows[-1 - len(config.relearn_budgets) - len(config.noise)]
            log(f"  {name:18s} {timings[name][-1]:5.1f}s hal {last['hal_rate']:5.1f} f1 {last['clean_f1']:5.1f} pope {last['pope_f1']:5.1f} | relearn " + " ".join(f"{r['hal_rate']:5.1f}" for r in rows if r["method"] == name and r["seed"] == seed and r["condition"] == "relearned"))
    return rows, {"rho": rho, "rho_sweep": sweep, "train_seconds": {k: float(np.mean(v)) for k, v in timings.items()}, "captioner": manifest.get("eval", {})}


METRICS = ("hal_rate", "chair_s", "chair_i", "clean_f1", "pope_f1", "pope_b_yes", "p_hal", "p_hal_push")


def per_seed(rows: list[dict], methods_: tuple[str, ...] = ("sare", "npo", "ga")) -> dict[str, dict[int, list[float]]]:
    """Hallucination rate per seed after each relearning budget (for paired comparisons)."""
    out: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if row["method"] in methods_ + ("base",) and row["condition"] in ("unlearned", "relearned"):
            out.setdefault(row["method"], {}).setdefault(row["relearn_steps"], []).append(round(row["hal_rate"], 1))
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (method, condition, relearn_steps)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["condition"], row["relearn_steps"]), []).append(row)
    out = []
    for (method, condition, steps), members in groups.items():
        agg = {"method": method, "family": "" if method == "base" else "hallucination-unlearning", "condition": condition, "relearn_steps": steps, "seeds": len(members)}
        for key in METRICS:
            values = [m[key] for m in members if m.get(key) is not None]
            agg[key] = round(float(np.mean(values)), 2) if values else None
            agg[f"{key}_std"] = round(float(np.std(values)), 2) if values else None
        out.append(agg)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hallucination-unlearning benchmark on the biased captioner")
    parser.add_argument("--quick", action="store_true", help="one seed, short runs (smoke test, no results file)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--captioner", default=None, help="captioner checkpoint (default: the committed one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = BenchConfig(seeds=tuple(range(args.seeds)))
    if args.quick:
        config = replace(config, seeds=(0,), steps=10, n_eval=50, relearn_budgets=(5,), noise=(0.1,), n_forget=64, rhos=(0.03, 0.1))
    start = time.time()
    rows, facts = run(config, captioner=args.captioner)
    table = aggregate(rows)
    print(f"\n{'method':18s} {'condition':10s} {'N':>3s} {'hal %':>13s} {'CHAIR_s':>7s} {'CHAIR_i':>7s} {'clean F1':>13s} {'POPE F1':>7s} {'p_push':>6s}")
    for r in table:
        push = "" if r["p_hal_push"] is None else f"{r['p_hal_push']:6.1f}"
        print(f"{r['method']:18s} {r['condition']:10s} {'-' if r['relearn_steps'] is None else r['relearn_steps']:>3} {r['hal_rate']:6.1f}±{r['hal_rate_std']:5.1f} {r['chair_s']:7.1f} {r['chair_i']:7.1f} {r['clean_f1']:6.1f}±{r['clean_f1_std']:5.1f} {r['pope_f1']:7.1f} {push}")
    print(f"total {time.time() - start:.0f}s")
    if args.quick:
        return
    columns = [Column("method", "Method"), Column("condition", "Condition"), Column("relearn_steps", "Relearn steps", digits=0),
               Column("hal_rate", "Hallucinated-object rate", "%", 1), Column("hal_rate_std", "± std", "%", 1),
               Column("chair_s", "CHAIR_s", "%", 1), Column("chair_i", "CHAIR_i", "%", 1),
               Column("clean_f1", "Clean-caption object F1", "%", 1), Column("clean_f1_std", "± std", "%", 1),
               Column("pope_f1", "POPE F1", "%", 1), Column("pope_b_yes", "'yes' to 'is there a B?' on A-only scenes", "%", 1), Column("p_hal", "p(hallucinated word)", "%", 1),
               Column("p_hal_push", f"p after worst-case push ρ'={config.push_rho}", "%", 1), Column("seeds", "Seeds", digits=0)]
    notes = (f"Biased ToyVLM-scene captioner (shape A='circle' nearly always with B='square', annotator bias). "
             f"{len(config.seeds)} seeds (paired data order), {config.steps} unlearning steps, batch {config.batch}, language model trained, vision frozen. "
             f"rho calibrated (largest value keeping the perturbed hallucination probability < 0.9 and raising the forget loss, on a held-out forget batch at an NPO-unlearned point): {facts['rho']} (sweep {facts['rho_sweep']}). "
             f"Relearning: fine-tune on {config.relearn_n} hallucinated captions, batch {config.relearn_batch}, lr {config.relearn_lr}; 'base' is the never-unlearned captioner relearned with the same budget. "
             f"Mean unlearning seconds per run (2 shared CPU cores, noisy): {json.dumps({k: round(v, 1) for k, v in facts['train_seconds'].items()})}. "
             f"Wall time {time.time() - start:.0f}s. Hallucination rate per seed by relearning budget (paired): {json.dumps(per_seed(rows))}. "
             "The rate moves in steps of about 30 points because the trigger scenes fall into a few shape combinations and the model's behaviour is nearly constant within one.")
    results = Results(id="hallucination-unlearning", title="Hallucination unlearning on a biased ToyVLM captioner: GA, NPO, EFUF, SARE, controls; relearning and weight noise",
                      command=command_line("reference_impls.hallucination.bench", argv), families=["hallucination-unlearning"], columns=columns, rows=table,
                      plots=[Plot(x="relearn_steps", y="hal_rate", group="method", title="Hallucinated-object rate vs relearning steps")], notes=notes)
    print(save_results(results))


if __name__ == "__main__":
    main()
