# %% [markdown]
# # Temporal token pooling and merging on ToyVLM v2 videos
#
# Frames of a video repeat one another: a static background is encoded again in every frame.
# Two training-free ways to spend fewer language-model tokens on it, both comparing a token
# only with the same spatial cell of other frames:
#
# - **temporal pooling** (`mode="pool"`): average each cell over groups of consecutive frames
#   (window 2 at a 50% budget, 4 at 25%);
# - **temporal merging** (`mode="merge"`): per cell, merge the most similar adjacent runs of
#   frames first (cosine similarity, size-weighted mean) until the budget is met, so a static
#   cell collapses to one token and a cell whose content changes keeps one token per change.
#
# ToyVLM v2's video suite shows one video of 16-32 frames, one Qwen2.5-VL video item, before the
# question; the temporal patch fuses two raw frames, so a "frame" here is one temporal slice of
# 8x16 merged tokens (8-16 slices, 1,024-2,048 visual tokens). Each video has a static, noisy
# background (fresh noise in every frame), up to 4 still objects, one object that moves in a
# straight line and, when there is room, one that shows in a single slice (a flash). The reply is
# decoded until `<eos>` and scored by exact match. A merged or pooled token takes the 3-D
# position of its earliest slice.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.encoding.keyframes import KeyframeSelection
from reference_impls.encoding.sweep import budget_sweep, plot_sweep, print_sweep
from reference_impls.encoding.temporal_merging import TemporalMerging, temporal_merge, temporal_pool

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()

# %% [markdown]
# Where do the kept tokens go? One held-out video's post-merger features, merged down to a
# quarter: each panel is a slice's 8x16 token grid; a coloured cell is a kept token (the first
# slice of its run), its colour the number of slices it stands for, black cells were merged into
# an earlier slice. Slice 0 keeps every cell (every run starts somewhere); later slices keep only
# the cells that changed. Tokens that show an object are marked: still objects in red, the
# moving object in white, the flash in magenta.

# %%
sample = bundle.samples(1, seed=4, suite="video")[0]
scene = sample.scene
inputs = bundle.collate([sample])
with torch.no_grad():
    out = bundle.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
t, h, w = (int(v) for v in inputs["video_grid_thw"][0])
h, w = h // 2, w // 2  # merged-token grid of a slice
cells = h * w
frames = out.pooler_output[0].view(t, cells, -1)  # (slices, cells, D)
_, size, rep = temporal_merge(frames, keep=t * cells // 4)
runs = torch.zeros(t * cells)
runs[rep] = size
labels = torch.as_tensor(scene.token_labels)  # (slices * cells,) object shown by each token, or -1
mover, flash = scene.moving[0], scene.flash[0] if scene.flash else -1
marks = {"red": [i for i in range(len(scene.objects)) if i not in (mover, flash)], "white": [mover], "magenta": [flash]}
runs_cmap = plt.get_cmap("viridis").with_extremes(bad="black")  # black: merged into an earlier slice
fig, axes = plt.subplots((t + 3) // 4, 4, figsize=(12, 1.7 * ((t + 3) // 4) + 0.6), squeeze=False)
for f, ax in enumerate(axes.flat):
    ax.set(xticks=[], yticks=[])
    if f >= t:
        ax.axis("off")
        continue
    grid = runs[f * cells : (f + 1) * cells].view(h, w)
    ax.imshow(grid.masked_fill(grid == 0, float("nan")).numpy(), vmin=1, vmax=t, cmap=runs_cmap)
    for colour, objects in marks.items():
        tokens = [k - f * cells for k in range(f * cells, (f + 1) * cells) if int(labels[k]) in objects]
        ax.scatter([k % w for k in tokens], [k // w for k in tokens], marker="s", s=8, color=colour)
    ax.set_title(f"slice {f}: {int((rep // cells == f).sum())} kept", fontsize=8)
fig.suptitle(f"temporal merge to 25%: kept tokens per slice (colour = slices merged); Q: {sample.qa.question}")
fig.tight_layout()
plt.show()
print("slices merged per kept token:", {int(s): int((size == s).sum()) for s in size.unique()})

# %% [markdown]
# Pooling is blind to content: at window 4 every cell averages four slices, so the flash shares
# its token with three slices of background and the moving object is smeared along its path. At
# the same count merging spends its tokens where the content changes. Below: mean cosine
# similarity between each object token and the token that carries it after the reduction, per
# kind of object.


# %%
def carrier(rep: torch.Tensor, index: int, cells: int) -> int:
    """Position in ``rep`` of the kept token whose run (or group) holds token ``index``."""
    same_cell = (rep % cells == index % cells) & (rep <= index)
    return int(same_cell.nonzero().max())


pooled, pool_rep = temporal_pool(frames, window=4)
merged, _, merge_rep = temporal_merge(frames, keep=pooled.shape[0])
flat = frames.reshape(-1, frames.shape[-1])
for name, objects in (("still", marks["red"]), ("moving", [mover]), ("flash", [flash])):
    tokens = [k for k in range(t * cells) if int(labels[k]) in objects]
    cos = {
        method: sum(float(torch.cosine_similarity(flat[k], kept[carrier(r, k, cells)], dim=0)) for k in tokens)
        / max(1, len(tokens))
        for method, kept, r in (("pool", pooled, pool_rep), ("merge", merged, merge_rep))
    }
    print(f"{name:>7} objects ({len(tokens):3d} tokens): pool {cos['pool']:.2f}, merge {cos['merge']:.2f}")

# %% [markdown]
# Exact match against the visual tokens kept on held-out videos, next to keyframe selection
# (whole slices, max-min on thumbnails) and random pruning of the same number of tokens. The
# model itself fails most `motion`, `still` and `events` questions with every token kept (they
# compare frames; `docs/notes/toyvlm.md` §5), so this sweep leaves those three kinds out and
# keeps the held-out samples of the other five (colour, shape, presence, count, flash), in
# order. With a few samples per kind the figures move by tens of points between runs.

# %%
FRAME_COMPARISON = ("motion", "still", "events")
n = 3 if QUICK else 24
videos = [s for s in bundle.samples(4 * n, seed=2, suite="video") if s.qa.kind not in FRAME_COMPARISON][:n]
budgets = [0.25] if QUICK else [0.5, 0.25, 0.125]
methods = {
    "temporal-merge": lambda b: TemporalMerging(budget=b),
    "temporal-pool": lambda b: TemporalMerging(budget=b, mode="pool"),
    "keyframes-maxmin": lambda b: KeyframeSelection(budget=b),
}
rows = budget_sweep(bundle, methods, budgets, n=n, samples=videos)
print_sweep(rows)
plot_sweep(rows, "ToyVLM v2 videos (8-16 slices of 128 tokens)")
plt.show()

# %% [markdown]
# The reproduced figures over all eight question kinds (ten seeds, 95% intervals, paired tests
# against random pruning, LLM prefill and decode times, ToMe within each slice as well) come
# from `python -m reference_impls.bench.video_tokens --suite video`
# (`video-encoders-toyvlm-v2-video.json` and its `-tests` file).
#
# **Limits by construction.** Purely temporal methods cannot go below one token per cell and
# video: a budget under 1 / slices keeps 1 / slices, so at 12.5% a 16-frame video (8 slices) is
# at that floor, where every cell collapses into one token and the flash and the moving object
# lose tokens of their own. Pooling by a fixed window also ignores where a change happens. The
# vision tower encodes every frame for all these methods; only the language model's input
# shrinks.
