# %% [markdown]
# # HF-OLB + HNABG: one continual anomaly detection run on ProcAD
#
# This notebook walks through a small continual run of our reference implementation of
# HF-OLB + HNABG (arXiv 2606.02042; only the abstract is public, so the algorithm is our
# reconstruction). A frozen diffusion U-Net, pretrained on a texture family disjoint from the
# task categories, learns ProcAD categories one task at a time. Each task adds a LoRA bank
# constrained to the orthogonal complement of the historical subspaces, and HNABG decides per
# layer whether to grow and with what rank. After each task we score every learned category
# (image and pixel AUROC), build the accuracy matrix, and compute A-AUROC and FM. We compare
# with naive sequential LoRA on the same backbone.

# %%
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_impls.continual_ad.data import Setting, load_setting
from reference_impls.continual_ad.diffusion import load_pretrained, make_schedule
from reference_impls.continual_ad.hfolb import HFOLB
from reference_impls.continual_ad.learner import TrainConfig, run_continual
from reference_impls.continual_ad.naive_lora import NaiveLoRA
from reference_impls.continual_ad.plots import plot_accuracy_matrices, print_summaries
from reference_impls.continual_ad.procad import write_procad
from reference_impls.continual_ad.scorer import DiffusionScorer

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
CATS = ("stripes_h", "checker") if QUICK else ("stripes_h", "checker", "dots")
STEPS = 4 if QUICK else 15
start = time.time()

# %% [markdown]
# ProcAD writes the MVTec AD folder layout, and the MVTec loader reads it back. At 16 px each
# category has normal training images and test images with scratch and spot defects, plus masks.

# %%
root = write_procad(tempfile.mkdtemp(), categories=CATS, size=16, n_train=16, n_test_good=4, n_per_defect=3)
setting = Setting("procad_demo", tuple((c,) for c in CATS))
data = load_setting(root, setting)
fig, axes = plt.subplots(1, len(CATS) * 2, figsize=(2 * len(CATS) * 1.2, 1.4))
for i, c in enumerate(CATS):
    d = data[c]
    axes[2 * i].imshow((d.test[-1].permute(1, 2, 0) + 1) / 2)
    axes[2 * i + 1].imshow(d.masks[-1], cmap="gray")
    axes[2 * i].set_title(c, fontsize=7)
for a in axes:
    a.axis("off")
plt.show()

# %% [markdown]
# Both methods share the frozen U-Net and the scorer: partial noising to 0.3 T, DDIM back,
# squared error and Gaussian smoothing. The image score is the maximum of the map.

# %%
schedule = make_schedule()
scorer = DiffusionScorer(ddim_steps=2 if QUICK else 3, n_seeds=1)
train = TrainConfig(steps=STEPS, batch=8, lr=3e-3)
hfolb = HFOLB(train=train, positions=16, n_tau=2, stat_images=8)
res_h = run_continual(hfolb, setting, data, load_pretrained(), schedule, scorer, seed=0)
res_n = run_continual(NaiveLoRA(train=train), setting, data, load_pretrained(), schedule, scorer, seed=0)
print_summaries({"HF-OLB": res_h, "naive LoRA": res_n})
print("HF-OLB routing accuracy (prototype prefix):", res_h.routing_accuracy)

# %% [markdown]
# The accuracy matrix: row i is the image AUROC of every category after task i (blank before
# the category is learned). FM is the mean drop from a category's best earlier value to its
# final value.

# %%
plot_accuracy_matrices({"HF-OLB": res_h, "naive LoRA": res_n})
plt.show()

# %% [markdown]
# HNABG's layer-dependent capacity: residual novelty ν per adapted layer and task (the share of
# the new task's input energy outside the stored subspace), and the rank each layer received.
# From the second task on, only the layers above the threshold (1 − ε) + 0.02 grow.

# %%
run = res_h.learner  # HF-OLB's run state: banks, subspaces, router and the per-task logs
layers = list(run.banks.layers)
nu = np.array([[log["layers"][l]["nu"] for l in layers] for log in run.history])
rank = np.array([[log["layers"][l]["r"] for l in layers] for log in run.history])
fig, axes = plt.subplots(2, 1, figsize=(8, 3.2), sharex=True)
axes[0].imshow(nu, aspect="auto", cmap="magma")
axes[0].set_ylabel("task")
axes[0].set_title("novelty ν per layer", fontsize=9)
axes[1].imshow(rank, aspect="auto", cmap="Blues")
axes[1].set_ylabel("task")
axes[1].set_title("rank added per layer", fontsize=9)
axes[1].set_xticks(
    range(len(layers)),
    [l.replace("_blocks", "").replace("attentions", "att").replace("resnets", "res") for l in layers],
    rotation=90,
    fontsize=5,
)
plt.tight_layout()
plt.show()
print(f"saturated layers: {len(run.saturated)}; total {time.time() - start:.1f} s")
