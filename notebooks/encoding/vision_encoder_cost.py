# %% [markdown]
# # Vision-encoder cost: windowed vs full attention in the Qwen2.5-VL tower
#
# Qwen2.5-VL's vision tower attends within 112x112-pixel windows in most blocks and over the
# whole image in only a few (`fullatt_block_indexes`). This notebook counts the tower's FLOPs
# against the image side for the published 7B vision sizes (analytically, no weights), then
# times random-init small towers on CPU with the released windowing and with full attention in
# every block. Timings share a 2-core machine with other jobs: read the trend, not the digits.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.encoding.encoder_cost import QWEN25VL_7B_VISION, SMALL_TOWERS, vision_cost

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)

# %% [markdown]
# ## FLOPs of the 7B vision tower (analytic)

# %%
sides = [224, 448, 672, 896, 1120, 1344]
rows = vision_cost(QWEN25VL_7B_VISION, sides, measure=False)
print(f"{'side':>6} {'tokens':>7} {'windowed TFLOPs':>16} {'full TFLOPs':>12} {'attention share (full)':>23}")
for side in sides:
    w, f = [r for r in rows if r["resolution"] == side]
    print(
        f"{side:>6} {w['tokens']:>7} {w['gflops'] / 1e3:>16.2f} {f['gflops'] / 1e3:>12.2f} {f['attention_gflops'] / f['gflops']:>23.0%}"
    )

fig, ax = plt.subplots(figsize=(5, 3.5))
for mode in ("windowed", "full"):
    ax.plot(sides, [r["gflops"] / 1e3 for r in rows if r["attention"] == mode], marker="o", label=mode)
ax.set(xlabel="image side (px)", ylabel="TFLOPs per image", title="Qwen2.5-VL-7B vision tower")
ax.legend()
plt.show()

# %% [markdown]
# ## Measured CPU time of random-init towers of a few sizes

# %%
sizes = dict(SMALL_TOWERS)
if QUICK:
    sizes = dict(list(sizes.items())[:1])
measure_sides = [112, 224, 448] if QUICK else [112, 224, 448, 672]
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, size in sizes.items():
    timed = vision_cost(size, measure_sides, repeats=1 if QUICK else 2)
    for mode, style in (("windowed", "-"), ("full", "--")):
        seconds = [r["seconds"] for r in timed if r["attention"] == mode]
        ax.plot(measure_sides, seconds, style, marker="o", label=f"{name}, {mode}")
        print(name, mode, [f"{s * 1e3:.0f} ms" for s in seconds])
ax.set(xlabel="image side (px)", ylabel="seconds per image (CPU, 1 thread)", yscale="log")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# Full attention's cost grows with the square of the patch count, windowed attention's roughly
# linearly; below one window (112 px) the two are the same model. At 1344 px the analytic count
# puts more than half of the full-attention tower's FLOPs in attention.
