# %% [markdown]
# # Replay: rehearsing a few stored normal images of every past category
#
# A shared LoRA on the frozen diffusion U-Net learns ProcAD categories one task at a time. Plain
# sequential training (naive LoRA) overwrites what earlier tasks needed, so the detector forgets
# them. Replay (`reference_impls.continual_ad.replay`) keeps `per_category` normal training images
# of each learned category and, from the second task on, fills half of every batch with them.
# It is the simplest remedy, and it stores data, which the parameter-isolation methods avoid.
#
# Same U-Net, scorer, training budget and protocol as the HF-OLB notebook and the benchmark
# (`python -m reference_impls.continual_ad.bench`); this run is one seed with shorter training.

# %%
import os
import tempfile
import time

import matplotlib.pyplot as plt
import torch

from reference_impls.common.results import RESULTS_DIR, load_results
from reference_impls.continual_ad.data import PRESETS, Setting, load_setting
from reference_impls.continual_ad.diffusion import load_pretrained, make_schedule
from reference_impls.continual_ad.learner import TrainConfig, run_continual
from reference_impls.continual_ad.naive_lora import NaiveLoRA
from reference_impls.continual_ad.plots import plot_accuracy_matrices, print_summaries
from reference_impls.continual_ad.procad import write_procad
from reference_impls.continual_ad.replay import Replay
from reference_impls.continual_ad.scorer import DiffusionScorer

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
start = time.time()
setting = PRESETS["procad_1x6"]
if QUICK:  # three tasks and a few steps: the code path only, no forgetting to see
    setting = Setting("procad_1x3", setting.groups[:3])
categories = list(setting.categories)
root = write_procad(tempfile.mkdtemp(), categories=categories, size=16, n_train=32, n_test_good=8, n_per_defect=4)
data = load_setting(root, setting)
train = TrainConfig(steps=4 if QUICK else 20, batch=8, lr=3e-3)
print("tasks:", " -> ".join(categories))

# %% [markdown]
# The buffer: after each task, `per_category` images of that task's categories join it. From the
# second task on, a batch is half new images and half buffer images.

# %%
replay = Replay(train=train, per_category=8)
schedule, scorer = make_schedule(), DiffusionScorer(ddim_steps=4, n_seeds=1)
results = {
    "naive LoRA": run_continual(NaiveLoRA(train=train), setting, data, load_pretrained(), schedule, scorer, seed=0),
    "replay (8/cat)": run_continual(replay, setting, data, load_pretrained(), schedule, scorer, seed=0),
}
print("buffer:", [tuple(b.shape) for b in replay.buffer])
if not QUICK:
    small = Replay(train=train, per_category=2)
    results["replay (2/cat)"] = run_continual(small, setting, data, load_pretrained(), schedule, scorer, seed=0)
print_summaries(results)

# %% [markdown]
# Row i of each matrix is the image AUROC of every category after task i. Naive LoRA's early
# columns fade as later tasks train; replay holds them.

# %%
plot_accuracy_matrices(results)
plt.show()

# %% [markdown]
# The benchmark's figures (six reported seeds, mean +- 95% CI, 30 steps per task) for the methods that share this
# protocol; `images_stored` is what replay pays for its low forgetting.

# %%
bench = load_results(RESULTS_DIR / "continual-ad-procad.json")
for row in bench.rows:
    if row["method"] in ("naive-lora", "replay", "hf-olb", "gpm-projection", "o-lora", "oracle-lora"):
        print(
            f"{row['method']:15s} image A-AUROC {row['image_a_auroc']:5.1f} +- {row['image_a_auroc_ci']:3.1f} "
            f"FM {row['image_fm']:4.1f} +- {row['image_fm_ci']:3.1f} | "
            f"pixel A-AUROC {row['pixel_a_auroc']:5.1f} +- {row['pixel_a_auroc_ci']:3.1f} "
            f"FM {row['pixel_fm']:4.1f} +- {row['pixel_fm_ci']:3.1f} | images stored {row['images_stored']}"
        )
print(f"total {time.time() - start:.1f} s")
