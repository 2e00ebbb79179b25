# %% [markdown]
# # ToMe and PruMerge (attention-agnostic encoder token compression) on ToyVLM
#
# Both act on the post-merger visual tokens of each image, in raster order, before the
# language model. ToMe merges the most similar token pairs (bipartite soft matching,
# size-weighted means) until the budget is met; PruMerge keeps the outliers of an importance
# score (here the distance of a token's feature from the image mean), fills the budget with
# evenly spaced tokens, adds to every kept token its 32 most similar tokens weighted by their
# score (unnormalised, as the authors' code) and appends one extra token, the score-weighted sum
# of the dropped tokens. Merged tokens sit at the position of one of the tokens they replace.
# Compared with random pruning.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.random_pruning import RandomPruning
from reference_impls.encoding.prumerge import PruMerge
from reference_impls.encoding.sweep import budget_sweep, load_bundle, object_recall, plot_sweep, print_sweep
from reference_impls.encoding.tome import ToMe

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle, trained = load_bundle()
print("ToyVLM checkpoint loaded" if trained else "no ToyVLM checkpoint: random-init model, accuracies mean nothing")

# %%
methods = {"tome": lambda b: ToMe(budget=b), "prumerge": lambda b: PruMerge(budget=b)}
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, methods, budgets, n=6 if QUICK else 30)
print_sweep(rows)
plot_sweep(rows, "ToMe / PruMerge vs random pruning (ToyVLM)")
plt.show()

# %% [markdown]
# PruMerge's own (adaptive) token count: only the IQR outliers of each image survive (plus the
# extra token).

# %%
method = PruMerge(adaptive=True)
samples = bundle.samples(2 if QUICK else 8, seed=2)
with torch.no_grad(), method(bundle.model):
    for sample in samples:
        bundle.model(**bundle.collate([sample]))
        objects = len(sample.scene.objects)
        print(f"{objects} objects -> {method.stats['visual_kept']} of {method.stats['visual_in']} tokens kept")

# %% [markdown]
# Do the kept tokens sit on the objects? Share of the scenes' objects whose own cell token is
# kept at budget 0.125 (32 of 256 tokens); random pruning keeps 12.5% of them on average. For
# ToMe the kept positions are the merge destinations, so its number says little.

# %%
probe = bundle.samples(3 if QUICK else 20, seed=7)
for name, method in {
    "random-pruning": RandomPruning(budget=0.125),
    "prumerge": PruMerge(budget=0.125),
    "tome": ToMe(budget=0.125),
}.items():
    print(f"{name:<16} object cells kept: {object_recall(bundle, method, probe):.0%}")
