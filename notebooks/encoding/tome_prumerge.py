# %% [markdown]
# # ToMe and PruMerge (attention-agnostic encoder token compression) on ToyVLM v2
#
# Both act on the post-merger visual tokens of each image, in raster order, before the
# language model. ToMe merges the most similar token pairs (bipartite soft matching,
# size-weighted means) until the budget is met; PruMerge keeps the outliers of an importance
# score (here the distance of a token's feature from the image mean), fills the budget with
# evenly spaced tokens, adds to every kept token its 32 most similar tokens weighted by their
# score (unnormalised, as the authors' code) and appends one extra token, the score-weighted sum
# of the dropped tokens. Merged tokens sit at the position of one of the tokens they replace.
# Compared with random pruning on ToyVLM v2's short suite: 16 images of 64 merged tokens (1,024
# visual tokens) before a question with a one-word answer, the reply decoded until `<eos>` and
# scored by exact match.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.encoding.prumerge import PruMerge
from reference_impls.encoding.sweep import budget_sweep, object_recall, plot_sweep, print_sweep
from reference_impls.encoding.tome import ToMe

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()

# %% [markdown]
# Exact match per budget, overall and per question kind. Colour, shape, presence, size and
# "which image shows X" are needles (one object, 1-4 tokens); `count` aggregates over all 16
# images and the model gets most of those wrong even with every token (`docs/notes/toyvlm.md`
# §5), so that column says little. The reproduced figures (ten seeds, 95% intervals, paired
# tests against random pruning) come from `python -m reference_impls.bench.tokens --suite short`.

# %%
methods = {"tome": lambda b: ToMe(budget=b), "prumerge": lambda b: PruMerge(budget=b)}
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, methods, budgets, n=3 if QUICK else 30)
print_sweep(rows)
plot_sweep(rows, "ToMe / PruMerge vs random pruning (ToyVLM v2, short suite)")
plt.show()

# %% [markdown]
# PruMerge's own (adaptive) token count: only the IQR outliers of each image survive, plus one
# extra token per image.

# %%
method = PruMerge(adaptive=True)
samples = bundle.samples(2 if QUICK else 8, seed=2, suite="short")
with torch.no_grad(), method(bundle.model):
    for sample in samples:
        bundle.model(**bundle.collate([sample]))
        objects = len(sample.scene.objects)
        print(
            f"{objects} objects in 16 images -> {method.stats['visual_kept']} of {method.stats['visual_in']} tokens kept"
        )

# %% [markdown]
# Do the kept tokens sit on the objects? Share of the scenes' objects (grey distractors
# excluded) of which at least one token is kept at budget 0.125 (8 of 64 tokens per image);
# random pruning finds an object of k tokens with probability about 1 - 0.875^k (12.5-41%). For ToMe
# the kept positions are the merge destinations, so its number says little.

# %%
probe = bundle.samples(2 if QUICK else 20, seed=7, suite="short")
for name, method in {
    "random-pruning": RandomPruning(budget=0.125),
    "prumerge": PruMerge(budget=0.125),
    "tome": ToMe(budget=0.125),
}.items():
    print(f"{name:<16} objects still shown: {object_recall(bundle, method, probe):.0%}")
