# %% [markdown]
# # VisionZip (attention-aware encoder token compression) on ToyVLM
#
# Qwen2.5-VL has no class token, so a merged token's importance is the attention its patches
# receive in the last full-attention vision block. VisionZip keeps the most attended tokens
# (dominant) and merges the rest into a few contextual tokens grouped by key similarity
# (54:10 split of the kept tokens, as in the paper's 64-token setting): a contextual token is
# its target plus the mean of the tokens assigned to it, as in the authors' code. Compared with
# random pruning at the same budgets.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.random_pruning import RandomPruning
from reference_impls.encoding.prumerge import PruMerge
from reference_impls.encoding.sweep import budget_sweep, load_bundle, object_recall, plot_sweep, print_sweep
from reference_impls.encoding.visionzip import AttentionRecorder, VisionZip, visionzip_split

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle, trained = load_bundle()
print("ToyVLM checkpoint loaded" if trained else "no ToyVLM checkpoint: random-init model, accuracies mean nothing")

# %%
for budget in (0.5, 0.25, 0.125):
    keep = round(64 * budget)
    print(f"budget {budget}: {keep} of 64 tokens per image = dominant, contextual {visionzip_split(keep, 64)}")

# %%
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
rows = budget_sweep(bundle, {"visionzip": lambda b: VisionZip(budget=b)}, budgets, n=6 if QUICK else 40)
print_sweep(rows)
plot_sweep(rows, "VisionZip vs random pruning (ToyVLM)")
plt.show()

# %% [markdown]
# Do the dominant tokens sit on the objects? Share of the scenes' objects whose own cell token is
# kept at budget 0.125 (32 of 256 tokens), against random pruning (12.5% on average) and
# PruMerge with the same attention score.

# %%
probe = bundle.samples(3 if QUICK else 20, seed=7)
methods = {
    "random-pruning": RandomPruning(budget=0.125),
    "visionzip": VisionZip(budget=0.125),
    "prumerge (attention score)": PruMerge(budget=0.125, score="attention"),
}
for name, method in methods.items():
    print(f"{name:<28} object cells kept: {object_recall(bundle, method, probe):.0%}")

# %% [markdown]
# Where does the attention go? Received attention of every merged token of the first image of a
# scene (last full-attention block), with the object cells marked.

# %%
from contextlib import ExitStack

sample = bundle.samples(1, seed=3)[0]
with ExitStack() as stack, torch.no_grad():
    recorder = AttentionRecorder.attach(bundle.model, stack)
    bundle.model(**bundle.collate([sample]))
scores = recorder.calls[0][0][0]
side = int(scores.numel() ** 0.5)
fig, ax = plt.subplots(figsize=(3.5, 3.5))
ax.imshow(scores.view(side, side).numpy(), cmap="viridis")
for obj in sample.scene.objects:
    if obj.image == 0:
        ax.scatter(obj.col, obj.row, marker="x", color="red")
ax.set(title="received attention, image 1 (x: objects)")
plt.show()

# %% [markdown]
# Reading: an object share below random pruning's means the tower's attention goes to the
# background. Mean *received* attention rewards tokens that many queries resemble, and in
# ToyVLM scenes the background is most of the image; VisionZip's premise (a class token that
# attends to the informative patches) has no counterpart in a tower without a class token, which
# is the weak point of this reconstruction (`docs/notes/transformers5.md` §10).
