# %% [markdown]
# # VisionZip (attention-aware encoder token compression) on ToyVLM v2
#
# Qwen2.5-VL has no class token, so a merged token's importance is the attention its patches
# receive in the last full-attention vision block. VisionZip keeps the most attended tokens
# (dominant) and merges the rest into a few contextual tokens grouped by key similarity
# (54:10 split of the kept tokens, as in the paper's 64-token setting): a contextual token is
# its target plus the mean of the tokens assigned to it, as in the authors' code. The budget
# applies to each image: ToyVLM v2's short suite shows 16 images of 64 merged tokens (1,024
# visual tokens) before a question with a one-word answer, and the reply is decoded until
# `<eos>` and scored by exact match. Compared with random pruning at the same budgets.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.encoding.prumerge import PruMerge
from reference_impls.encoding.sweep import budget_sweep, object_recall, plot_sweep, print_sweep
from reference_impls.encoding.visionzip import AttentionRecorder, VisionZip, visionzip_split

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()

# %%
for budget in (0.5, 0.25, 0.125):
    keep = round(64 * budget)
    print(
        f"budget {budget}: {keep} of 64 tokens per image, {16 * keep} of 1,024 per prompt = "
        f"dominant, contextual {visionzip_split(keep, 64)} per image"
    )

# %% [markdown]
# Exact match against the visual tokens kept, on held-out samples of the short suite, overall
# and per question kind. Colour, shape, presence, size and "which image shows X" are needles
# (the evidence is one object, 1-4 of the 1,024 tokens); `count` counts objects of a colour
# over all 16 images. The model itself gets most count questions wrong with every token kept
# (`docs/notes/toyvlm.md` §5), so the count column says little about what a method keeps. With
# a few samples per kind the figures move by tens of points between seeds; the reproduced ones
# come from `python -m reference_impls.bench.tokens --suite short` (ten seeds, 95% intervals,
# tests against random pruning).

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, {"visionzip": lambda b: VisionZip(budget=b)}, budgets, n=8 if QUICK else 36)
print_sweep(rows)
plot_sweep(rows, "VisionZip vs random pruning (ToyVLM v2, short suite)")
plt.show()

# %% [markdown]
# Do the dominant tokens sit on the objects? Share of the scenes' objects (grey distractors
# excluded) of which at least one token is kept at budget 0.125 (8 of 64 tokens per image),
# against random pruning (an object of k tokens survives with probability about 1 - 0.875^k, 12.5-41%)
# and PruMerge with the same attention score.

# %%
probe = bundle.samples(3 if QUICK else 20, seed=7, suite="short")
methods = {
    "random-pruning": RandomPruning(budget=0.125),
    "visionzip": VisionZip(budget=0.125),
    "prumerge (attention score)": PruMerge(budget=0.125, score="attention"),
}
for name, method in methods.items():
    print(f"{name:<28} objects still shown: {object_recall(bundle, method, probe):.0%}")

# %% [markdown]
# Where does the attention go? Received attention of every merged token of the first image of a
# sample (last full-attention block), with the tokens that show a named object marked.

# %%
from contextlib import ExitStack

sample = bundle.samples(1, seed=3, suite="short")[0]
with ExitStack() as stack, torch.no_grad():
    recorder = AttentionRecorder.attach(bundle.model, stack)
    bundle.model(**bundle.collate([sample]))
scores = recorder.calls[0][0][0]  # (64,) image 1, raster order
side = int(scores.numel() ** 0.5)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
axes[0].imshow(sample.scene.images[0])
axes[0].set(title="image 1", xticks=[], yticks=[])
axes[1].imshow(scores.view(side, side).numpy(), cmap="viridis")
for tokens in sample.scene.object_tokens:
    for token in tokens:
        if token < side * side:  # a token of image 1
            axes[1].scatter(token % side, token // side, marker="x", color="red")
axes[1].set(title="received attention (x: object tokens)", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# Reading: a share well above random pruning's means the tower's received attention picks out
# the tokens that show the objects (on ToyVLM v2, textured coloured shapes on a dark, noisy
# background); a share at or below it would mean the attention goes to the background. The
# shares printed above come from a few samples of this run. Finding an object is necessary, not
# sufficient: an object of 2-4 tokens may keep only a fragment, and the reply needs its colour,
# shape, size and image to survive in what is kept. VisionZip's premise (a class token
# that attends to the informative patches) has no counterpart in a tower without a class token,
# which remains the weak point of this reconstruction (`docs/notes/transformers5.md` §10).
