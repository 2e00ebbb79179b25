# %% [markdown]
# # Regularisation and gradient projection: GPM and O-LoRA on ProcAD
#
# Two ways to keep a continual detector from overwriting what earlier tasks need, without
# storing their images:
#
# - **GPM-style gradient projection** (`reference_impls.continual_ad.gpm_projection`): each
#   adapted layer keeps an orthonormal basis `U` of the inputs that past tasks fed it, and every
#   weight gradient `G` is replaced by `G (I - U Uᵀ)` before the optimiser step. A hard constraint
#   in activation space.
# - **O-LoRA** (`reference_impls.continual_ad.olora`): a new LoRA per task whose down-projection
#   is softly pushed orthogonal to the earlier ones by a penalty. A soft constraint in parameter
#   space, with no guarantee on old inputs' outputs.
#
# Same frozen U-Net, scorer and protocol as the benchmark (`python -m reference_impls.continual_ad.bench`);
# this run is one seed with shorter training.

# %%
import os
import tempfile
import time

import matplotlib.pyplot as plt
import torch

from reference_impls.common.results import RESULTS_DIR, load_results
from reference_impls.continual_ad.data import PRESETS, Setting, load_setting
from reference_impls.continual_ad.diffusion import load_pretrained, make_schedule
from reference_impls.continual_ad.gpm_projection import GPMProjection, project_gradient
from reference_impls.continual_ad.learner import TrainConfig, run_continual
from reference_impls.continual_ad.naive_lora import NaiveLoRA
from reference_impls.continual_ad.olora import OLoRA
from reference_impls.continual_ad.plots import plot_accuracy_matrices, print_summaries
from reference_impls.continual_ad.procad import write_procad
from reference_impls.continual_ad.scorer import DiffusionScorer

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
start = time.time()

# %% [markdown]
# Why projection protects old tasks, on one linear layer: old inputs span a 4-dimensional
# subspace `U` of a 16-dimensional input space. A gradient step that has been projected away from
# `U` leaves the layer's outputs on every old input unchanged (up to rounding), whatever the new
# task's loss; the unprojected step does not.

# %%
g = torch.Generator().manual_seed(0)
old_inputs = torch.randn(32, 4, generator=g) @ torch.randn(4, 16, generator=g)  # (32, 16), rank 4
U = torch.linalg.svd(old_inputs.T, full_matrices=False).U[:, :4]  # (16, 4) orthonormal basis of the old inputs
weight = torch.randn(8, 16, generator=g)
grad = torch.randn(8, 16, generator=g)  # stands in for the new task's gradient
for name, step in (("plain", grad), ("projected", project_gradient(grad, U))):
    change = (old_inputs @ (weight - 0.1 * step).T - old_inputs @ weight.T).abs().max()
    print(f"{name:9s} step: largest change of an old output {change:.2e}")

# %% [markdown]
# The continual run: six one-category ProcAD tasks (three in the quick setting). GPM trains the
# adapted layers' full weights with SGD; its basis grows after each task by GPM's energy rule
# (threshold 0.97 + 0.003 t for the t-th task, counted from 0): after the first task the
# directions whose cumulative energy share stays below the threshold, after later ones the
# fewest new directions that bring the captured share of the new inputs up to it.

# %%
setting = PRESETS["procad_1x6"]
if QUICK:  # three tasks and a few steps: the code path only
    setting = Setting("procad_1x3", setting.groups[:3])
root = write_procad(
    tempfile.mkdtemp(), categories=setting.categories, size=16, n_train=32, n_test_good=8, n_per_defect=4
)
data = load_setting(root, setting)
steps = 4 if QUICK else 20
train = TrainConfig(steps=steps, batch=8, lr=3e-3)
schedule, scorer = make_schedule(), DiffusionScorer(ddim_steps=4, n_seeds=1)
gpm = GPMProjection(train=TrainConfig(steps=steps, batch=8, lr=0.02), positions=16, n_tau=2, stat_images=8)
results = {
    "naive LoRA": run_continual(NaiveLoRA(train=train), setting, data, load_pretrained(), schedule, scorer, seed=0),
    "GPM projection": run_continual(gpm, setting, data, load_pretrained(), schedule, scorer, seed=0),
    "O-LoRA": run_continual(OLoRA(train=train), setting, data, load_pretrained(), schedule, scorer, seed=0),
}
print_summaries(results)
print(
    "GPM basis directions (all layers) after each task:", [log["basis_dims"] for log in results["GPM projection"].logs]
)

# %% [markdown]
# Row i is every category's AUROC after task i. GPM's early columns stay put; what it gives up
# is plasticity: later tasks can only use the directions earlier tasks left free.

# %%
plot_accuracy_matrices(results)
plt.show()
plot_accuracy_matrices(results, metric="pixel")
plt.show()

# %% [markdown]
# The benchmark's figures (six reported seeds, mean +- 95% CI, 30 steps per task):

# %%
bench = load_results(RESULTS_DIR / "continual-ad-procad.json")
for row in bench.rows:
    if row["method"] in ("naive-lora", "gpm-projection", "o-lora", "replay", "hf-olb"):
        print(
            f"{row['method']:15s} image A-AUROC {row['image_a_auroc']:5.1f} +- {row['image_a_auroc_ci']:3.1f} "
            f"FM {row['image_fm']:4.1f} +- {row['image_fm_ci']:3.1f} | "
            f"pixel A-AUROC {row['pixel_a_auroc']:5.1f} +- {row['pixel_a_auroc_ci']:3.1f} "
            f"FM {row['pixel_fm']:4.1f} +- {row['pixel_fm_ci']:3.1f}"
        )
print(f"total {time.time() - start:.1f} s")
