# %% [markdown]
# # Adaptive resolution on ToyVLM
#
# Each image's edge density (fraction of edge pixels after a 4x4 blur) decides its token grid:
# a flat image gets the budget's fraction of the tokens, a busy one all of them; the image is
# downsampled to that grid and re-encoded by the vision tower. The first cell shows the grid
# chosen against the number of objects in an image; the second the accuracy against the mean
# number of visual tokens, next to random pruning at the same budgets (the method keeps more
# tokens than the budget on busy images, so compare along the x axis).

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.encoding.adaptive_resolution import AdaptiveResolution
from reference_impls.encoding.sweep import budget_sweep, load_bundle, plot_sweep, print_sweep

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle, trained = load_bundle()
print("ToyVLM checkpoint loaded" if trained else "no ToyVLM checkpoint: random-init model, accuracies mean nothing")

# %%
method = AdaptiveResolution(budget=0.25)
by_objects: dict[int, list[int]] = {}
with torch.no_grad(), method(bundle.model):
    for sample in bundle.samples(2 if QUICK else 8, seed=4):
        bundle.model(**bundle.collate([sample]))
        for index, (rows_, cols) in enumerate(method.grids):
            objects = sum(obj.image == index for obj in sample.scene.objects)
            by_objects.setdefault(objects, []).append(rows_ * cols)
for objects, tokens in sorted(by_objects.items()):
    print(f"{objects} objects: {sum(tokens) / len(tokens):.1f} tokens per image on average ({len(tokens)} images)")

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(
    bundle, {"adaptive-resolution": lambda b: AdaptiveResolution(budget=b)}, budgets, n=6 if QUICK else 40
)
print_sweep(rows)
plot_sweep(rows, "Adaptive resolution vs random pruning (ToyVLM)")
plt.show()

# %% [markdown]
# Reading: the method only pays off when the model reads low-resolution images well. ToyVLM's
# objects fill one 28 px cell at 224 px, so halving the side puts four cells in one token, and
# the re-encoded tokens sit at spread-out positions of the original grid rather than at the
# compact positions a natively small image would get (see the module's deviations).
