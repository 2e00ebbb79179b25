# %% [markdown]
# # Training-free keyframe selection on ToyVLM
#
# Greedy max-min selection keeps the frames that differ most from those already kept (first
# frame first), from 4x4 colour thumbnails of the raw frames, so exact duplicates go first and
# the vision tower only encodes the kept frames. ToyVLM feeds its clips (and its multi-image
# scenes) as separate images, so here the images of a prompt are the frames
# (`images_as_frames=True`); budget 0.5 keeps 2 of 4 images. Compared with random pruning of
# the same number of visual tokens.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.encoding.keyframes import KeyframeSelection, frame_thumbnails, select_keyframes
from reference_impls.encoding.sweep import budget_sweep, load_bundle, plot_sweep, print_sweep

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle, trained = load_bundle()
print("ToyVLM checkpoint loaded" if trained else "no ToyVLM checkpoint: random-init model, accuracies mean nothing")

# %% [markdown]
# The rule on one clip with a repeated frame: the copy is dropped first.

# %%
from dataclasses import replace

import numpy as np

from reference_impls.common.toyvlm import patchify_video

clip = bundle.samples(1, seed=5, spec=replace(bundle.spec, video_frames=4, image_size=112))[0].scene
frames = np.stack(clip.images + [clip.images[1]])  # frame 4 repeats frame 1
pixels, grid = patchify_video(frames, temporal=1)  # one row per patch and frame
thumbs = frame_thumbnails(pixels, tuple(grid), channels=3)
for keep in range(1, len(frames) + 1):
    print(f"keep {keep} of {len(frames)}: frames {select_keyframes(thumbs, keep).tolist()}")

# %%
budgets = [0.5] if QUICK else [0.75, 0.5, 0.25]
methods = {"keyframes-maxmin": lambda b: KeyframeSelection(budget=b, images_as_frames=True)}
rows = budget_sweep(bundle, methods, budgets, n=6 if QUICK else 40)
print_sweep(rows)
plot_sweep(rows, "Keyframe (image) selection vs random pruning (ToyVLM)")
plt.show()

# %% [markdown]
# Dropping a whole image loses every object in it, while random pruning spreads its losses over
# all images; which is better depends on how many questions need the dropped images.
