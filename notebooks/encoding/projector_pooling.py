# %% [markdown]
# # Projector pooling (modality adapters) on ToyVLM
#
# Average-pools the merged visual tokens of every image on its grid (budget 0.25: a 8x8 grid of
# tokens becomes 4x4), training-free, and feeds the pooled tokens to the language model at the
# position of each window's centre cell. The curve shows ToyVLM's answer accuracy against the
# visual tokens kept, next to random pruning at the same budgets. ToyVLM objects fill exactly
# one 28 px cell, so pooling blends every object with its neighbours: a hard case for pooling.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.encoding.pooling import ProjectorPooling, pooled_grid
from reference_impls.encoding.sweep import budget_sweep, load_bundle, plot_sweep, print_sweep

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle, trained = load_bundle()
print("ToyVLM checkpoint loaded" if trained else "no ToyVLM checkpoint: random-init model, accuracies mean nothing")

# %% [markdown]
# Budget to pooled grid (each side shrinks by the square root of the budget, rounded half up):

# %%
for budget in (0.5, 0.25, 0.125, 0.0625):
    print(f"budget {budget:<6} 8x8 -> {pooled_grid(8, 8, budget)}")

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, {"projector-pooling": lambda b: ProjectorPooling(budget=b)}, budgets, n=6 if QUICK else 40)
print_sweep(rows)
plot_sweep(rows, "Projector pooling vs random pruning (ToyVLM)")
plt.show()

# %% [markdown]
# With few samples the accuracies move by several points between runs; the shared benchmark
# `python -m reference_impls.bench.tokens` evaluates 10 seeds of 20 held-out samples per point. The papers train
# their projector with pooling in place; pooling a model trained without it blends each
# one-cell object with its background neighbours, which ToyVLM never saw.
