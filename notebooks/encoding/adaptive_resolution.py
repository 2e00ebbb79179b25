# %% [markdown]
# # Adaptive resolution on ToyVLM v2
#
# Each image's edge density (fraction of edge pixels after a 4x4 blur) decides its token grid:
# a flat image gets the budget's fraction of the tokens, a busy one all of them; the image is
# downsampled to that grid and re-encoded by the vision tower. ToyVLM v2's short suite shows 16
# images of 8x8 merged tokens (1,024 visual tokens), each with 1-3 coloured, textured shapes,
# grey specks and sometimes a grey distractor shape, before a question with a one-word answer;
# the reply is decoded until `<eos>` and scored by exact match. The first cell shows the grid
# chosen against the number of named objects in an image; the second the exact match against
# the mean number of visual tokens, next to random pruning at the same budgets (the method keeps
# more tokens than the budget on busy images, so compare along the x axis).

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.encoding.adaptive_resolution import AdaptiveResolution
from reference_impls.encoding.sweep import budget_sweep, plot_sweep, print_sweep

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()

# %%
method = AdaptiveResolution(budget=0.25)
by_objects: dict[int, list[int]] = {}
with torch.no_grad(), method(bundle.model):
    for sample in bundle.samples(1 if QUICK else 4, seed=4, suite="short"):
        bundle.model(**bundle.collate([sample]))
        for index, (rows_, cols) in enumerate(method.grids):
            objects = sum(obj.image == index for obj in sample.scene.objects)
            by_objects.setdefault(objects, []).append(rows_ * cols)
for objects, tokens in sorted(by_objects.items()):
    print(
        f"{objects} objects: {sum(tokens) / len(tokens):.1f} of 64 tokens per image on average ({len(tokens)} images)"
    )

# %% [markdown]
# Exact match per budget, overall and per question kind. Colour, shape, presence, size and
# "which image shows X" are needles (one object, 1-4 tokens); `count` aggregates over all 16
# images and the model gets most of those wrong even with every token (`docs/notes/toyvlm.md`
# §5), so that column says little. The reproduced figures (ten seeds, 95% intervals, paired
# tests against random pruning) come from `python -m reference_impls.bench.tokens --suite short`.

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(
    bundle, {"adaptive-resolution": lambda b: AdaptiveResolution(budget=b)}, budgets, n=8 if QUICK else 36
)
print_sweep(rows)
plot_sweep(rows, "Adaptive resolution vs random pruning (ToyVLM v2, short suite)")
plt.show()

# %% [markdown]
# Reading: the method only pays off when the model reads low-resolution images well. A ToyVLM v2
# object is 14-28 px, 1-4 cells of 28 px at 224 px; halving the side makes it 7-14 px, at most
# half a token's side, and the re-encoded tokens sit at spread-out positions of the original grid rather than
# at the compact positions a natively small image would get (see the module's deviations). The
# edge-density defaults were set by looking at ToyVLM v1's scenes (plain shapes, no texture); the
# first cell shows whether v2's textured shapes and specks leave any image flat enough to shrink.
