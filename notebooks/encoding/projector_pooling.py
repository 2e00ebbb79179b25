# %% [markdown]
# # Projector pooling (modality adapters) on ToyVLM v2
#
# Average-pools the merged visual tokens of every image on its grid (budget 0.25: a 8x8 grid of
# tokens becomes 4x4), training-free, and feeds the pooled tokens to the language model at the
# position of each window's centre cell. ToyVLM v2's short suite shows 16 images of 8x8 merged
# tokens (1,024 visual tokens) before a question with a one-word answer; the reply is decoded
# until `<eos>` and scored by exact match. The curve shows the share of exact replies against
# the visual tokens kept, next to random pruning at the same budgets. ToyVLM v2 objects are 14-28
# px shapes at any offset, so each covers 1-4 of the 28 px token cells and a 2x2 pooling window
# blends it with background (and sometimes with a neighbouring object): a hard case for pooling
# a model trained without it.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.encoding.pooling import ProjectorPooling, pooled_grid
from reference_impls.encoding.sweep import budget_sweep, plot_sweep, print_sweep

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()

# %% [markdown]
# Budget to pooled grid (each side shrinks by the square root of the budget, rounded half up),
# per image, and the tokens of a 16-image prompt:

# %%
for budget in (0.5, 0.25, 0.125, 0.0625):
    rows_, cols = pooled_grid(8, 8, budget)
    print(f"budget {budget:<6} 8x8 -> {rows_}x{cols}: {16 * rows_ * cols} of 1,024 tokens")

# %% [markdown]
# Exact match per budget, overall and per question kind. Colour, shape, presence, size and
# "which image shows X" are needles (one object, 1-4 tokens); `count` aggregates over all 16
# images and the model gets most of those wrong even with every token (`docs/notes/toyvlm.md`
# §5), so that column says little. At 0.125 the 3x3 grid keeps 144 tokens, more than the
# budget's 128: compare methods along the x axis (tokens kept), not by budget.

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, {"projector-pooling": lambda b: ProjectorPooling(budget=b)}, budgets, n=8 if QUICK else 36)
print_sweep(rows)
plot_sweep(rows, "Projector pooling vs random pruning (ToyVLM v2, short suite)")
plt.show()

# %% [markdown]
# With a few samples per question kind the figures move by tens of points between runs; the
# shared benchmark `python -m reference_impls.bench.tokens --suite short` evaluates ten seeds of
# held-out samples per point (95% intervals, paired tests against random pruning). The papers
# train their projector with pooling in place; pooling a model trained without it hands the
# language model averaged tokens it never saw in training.
