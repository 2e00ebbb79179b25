# %% [markdown]
# # SARE vs NPO: erasing a co-occurrence hallucination, then attacking it
#
# A small Qwen2.5-VL captioner (trained on ToyVLM scenes by
# `reference_impls/hallucination/train_captioner.py`) has learnt from biased annotations to
# name a square whenever it sees a circle. We build forget data from its own hallucinated
# captions, unlearn with NPO and with SARE (NPO plus a targeted sharpness-aware step), and run
# a short relearning attack on a few hallucinated captions; the never-unlearned captioner,
# relearned with the same budget, is the reference. The live run is deliberately short (CPU
# budget), so it shows the mechanics; the last cell plots the 20-seed benchmark with its 95%
# intervals (`python -m reference_impls.hallucination.bench`). Set ATLAS_QUICK=1 for a smaller run.

# %%
import copy
import json
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.results import RESULTS_DIR
from reference_impls.hallucination.bench import CALIBRATION_SEED, BenchConfig, make_data
from reference_impls.hallucination.captioner import evaluate_captioner, make_eval_set
from reference_impls.hallucination.npo import NPO
from reference_impls.hallucination.robustness import relearn
from reference_impls.hallucination.sare import SARE, SAMConfig, calibrate_rho
from reference_impls.hallucination.train_captioner import load_captioner

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(2)
STEPS, BATCH, N_EVAL, BUDGETS = (2, 4, 6, (2,)) if QUICK else (12, 8, 32, (5, 10))
# The quick setting (tests) tries only the radius the benchmark calibrated; the full run sweeps them all.
RHOS = (0.03,) if QUICK else (0.3, 0.1, 0.03, 0.01)

base, vocab, world, manifest = load_captioner()
base.model.visual.requires_grad_(False)
config = BenchConfig(steps=STEPS, n_forget=16, batch=BATCH, relearn_n=16, relearn_batch=BATCH, retain_pool=32)
splits, batches, attack = make_data(base, vocab, world, config, seed=0)
eval_set = make_eval_set(world, N_EVAL, N_EVAL)
evaluate = lambda m: evaluate_captioner(m, vocab, world, eval_set, with_pope=False)
print(
    f"{len(splits['scenes'])} of 16 trigger scenes get a hallucinated caption; example: {' '.join(splits['captions'][0])!r} for {sorted(splits['scenes'][0].truth)}"
)

# %% [markdown]
# SARE's radius rho is calibrated where SARE operates: for each candidate (largest first) it
# unlearns a copy of this captioner on a calibration split (seed 99, never reported) and keeps the
# first rho for which no step lets the perturbation lift the hallucinated word's probability over
# 0.9 (at such a step the forget gradient vanishes). The sweep shows how many steps each rho saturated.

# %%
_, calibration_batches, _ = make_data(base, vocab, world, config, seed=CALIBRATION_SEED)
torch.manual_seed(CALIBRATION_SEED)
RHO, sweep = calibrate_rho(SARE(beta=0.5, lr=5e-4), base, calibration_batches, STEPS, rhos=RHOS)
for row in sweep:
    print(
        f"rho {row['rho']:<5}: {row['saturated_steps']} of {row['steps']} steps saturated, max p(target) at theta+eps {row['max_p_target_adv']:.3f}"
    )
print(f"calibrated rho = {RHO}")

# %% [markdown]
# Unlearn with NPO and SARE from the same data order; measure the hallucinated-object rate
# (captions naming the square on circle-without-square scenes) and the clean-caption object
# F1, then relearn.

# %%
curves = {}
methods = {"base": None, "npo": NPO(beta=0.5, lr=5e-4), "sare": SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=RHO))}
for name, method in methods.items():
    model = copy.deepcopy(base)
    if method is not None:
        torch.manual_seed(0)
        method.unlearn(model, batches, steps=STEPS)
    scores = evaluate(model)
    rows = relearn(model, attack, checkpoints=BUDGETS, evaluate=evaluate)
    curves[name] = [(0, scores["hal_rate"])] + [(r["steps"], r["hal_rate"]) for r in rows]
    print(
        f"{name:5s} hal {scores['hal_rate']:5.1f}%  clean F1 {scores['clean_f1']:5.1f}  after relearning: "
        + ", ".join(f"{r['steps']} steps {r['hal_rate']:.1f}%" for r in rows)
    )

# %% [markdown]
# Left: this short live run. Right: the committed benchmark (60 unlearning steps, mean over 20
# seeds, error bars are 95% confidence intervals); its paired tests over seeds are in
# `hallucination-unlearning-tests.json` and on the family page.

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for name, points in curves.items():
    left.plot(*zip(*points), marker="o", label=name)
left.set(title=f"live run ({STEPS} unlearning steps)", xlabel="relearning steps", ylabel="hallucinated-object rate (%)")
left.legend()
path = RESULTS_DIR / "hallucination-unlearning.json"
if path.exists():
    rows = [r for r in json.loads(path.read_text())["rows"] if r["condition"] in ("unlearned", "relearned")]
    for name in ("base", "ga", "npo", "sare", "sam-untargeted", "npo-same-compute"):
        points = sorted(
            (r["relearn_steps"], r["hal_rate"], r.get("hal_rate_ci") or 0) for r in rows if r["method"] == name
        )
        xs, ys, spread = zip(*points)
        right.errorbar(xs, ys, yerr=spread, marker="o", capsize=3, label=name)
    right.set(title="benchmark (mean, 95% CI over seeds)", xlabel="relearning steps")
    right.legend()
plt.show()
