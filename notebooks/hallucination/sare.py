# %% [markdown]
# # SARE vs NPO: erasing a co-occurrence hallucination, then attacking it
#
# A small Qwen2.5-VL captioner (trained on ToyVLM scenes, see
# `reference_impls/hallucination/train_captioner.py`) has learnt from biased annotations to
# name a square whenever it sees a circle. We build forget data from its own hallucinated
# captions, unlearn with NPO and with SARE (NPO plus a targeted sharpness-aware step), and then
# run a short relearning attack on a few hallucinated captions. The never-unlearned captioner,
# relearned with the same budget, is the reference. Set ATLAS_QUICK=1 for a smaller run.

# %%
import copy
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.hallucination.bench import BenchConfig, make_data
from reference_impls.hallucination.captioner import evaluate_captioner, make_eval_set
from reference_impls.hallucination.npo import NPO
from reference_impls.hallucination.robustness import relearn
from reference_impls.hallucination.sare import SARE
from reference_impls.hallucination.train_captioner import load_captioner

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(2)
STEPS, BATCH, N_EVAL, BUDGETS = (6, 8, 24, (5,)) if QUICK else (16, 12, 50, (5, 10))
RHO = 0.3  # the benchmark calibrates rho (reference_impls/results/hallucination-unlearning.json)

base, vocab, world, manifest = load_captioner()
base.model.visual.requires_grad_(False)
config = BenchConfig(steps=STEPS, n_forget=32, batch=BATCH, relearn_batch=BATCH, retain_pool=100)
splits, batches, attack = make_data(base, vocab, world, config, seed=0)
eval_set = make_eval_set(world, N_EVAL, N_EVAL)
evaluate = lambda m: evaluate_captioner(m, vocab, world, eval_set)
print(f"{len(splits['scenes'])} of 32 trigger scenes get a hallucinated caption; example: {' '.join(splits['captions'][0])!r} for {sorted(splits['scenes'][0].truth)}")

# %% [markdown]
# Unlearn with NPO and SARE from the same data order, and measure the hallucinated-object
# rate (captions that name the square on circle-without-square scenes) and the clean-caption
# object F1, before and after relearning.

# %%
curves = {}
for name, method in {"base": None, "npo": NPO(beta=0.5, lr=5e-4), "sare": SARE(rho=RHO, beta=0.5, lr=5e-4)}.items():
    model = copy.deepcopy(base)
    if method is not None:
        torch.manual_seed(0)
        method.unlearn(model, batches, steps=STEPS)
    scores = evaluate(model)
    rows = relearn(model, attack, checkpoints=BUDGETS, evaluate=evaluate)
    curves[name] = [(0, scores["hal_rate"])] + [(r["steps"], r["hal_rate"]) for r in rows]
    print(f"{name:5s} hal {scores['hal_rate']:5.1f}%  clean F1 {scores['clean_f1']:5.1f}  POPE F1 {scores['pope_f1']:5.1f}  after relearning: " + ", ".join(f"{r['steps']} steps {r['hal_rate']:.1f}%" for r in rows))

# %%
for name, points in curves.items():
    plt.plot(*zip(*points), marker="o", label=name)
plt.xlabel("relearning steps")
plt.ylabel("hallucinated-object rate (%)")
plt.legend()
plt.title("Relapse under the relearning attack")
plt.show()
