# %% [markdown]
# # The diffusion reconstruction detector shared by the continual AD methods
#
# Every continual method in `reference_impls.continual_ad` scores images the same way: noise
# the image to 0.3 T, run deterministic DDIM back, and take the smoothed squared error as the
# anomaly map. This notebook adapts the frozen pretrained U-Net to one ProcAD category with a
# small LoRA, then shows inputs, reconstructions, anomaly maps and ground-truth masks, with the
# image and pixel AUROC before and after adaptation.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import torch

from reference_impls.continual_ad.banks import LoRABanks
from reference_impls.continual_ad.data import load_mvtec_category
from reference_impls.continual_ad.diffusion import ddim_reconstruct, load_pretrained, make_schedule
from reference_impls.continual_ad.learner import TrainConfig, batches, train_denoiser
from reference_impls.continual_ad.metrics import auroc, pixel_auroc
from reference_impls.continual_ad.procad import write_procad
from reference_impls.continual_ad.scorer import DiffusionScorer

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
torch.manual_seed(0)  # the LoRA initialisation draws from the global generator (run_continual seeds it the same way)
root = write_procad(tempfile.mkdtemp(), categories=("dots",), size=16, n_train=32, n_test_good=4, n_per_defect=4)
data = load_mvtec_category(root, "dots")
schedule, scorer = make_schedule(), DiffusionScorer(ddim_steps=3 if QUICK else 5, n_seeds=1)

# %% [markdown]
# The frozen U-Net was pretrained on a different texture family, so it already reconstructs
# dots roughly. A rank-4 LoRA trained briefly on normal dots sharpens it.

# %%
banks = LoRABanks(load_pretrained())
maps0, scores0 = scorer(banks.model, data.test, schedule)
params = banks.add("dots", {layer: 4 for layer in banks.layers}, owner=1)
train_denoiser(
    banks.model, params, batches(data.train, 8), schedule, TrainConfig(steps=5 if QUICK else 30, batch=8, lr=3e-3)
)
maps, scores = scorer(banks.model, data.test, schedule)
for name, (m, s) in (("pretrained only", (maps0, scores0)), ("with LoRA", (maps, scores))):
    print(
        f"{name:16s} image AUROC {100 * auroc(s, data.labels):.1f}  pixel AUROC {100 * pixel_auroc(m, data.masks):.1f}"
    )

# %%
t0 = int(0.3 * schedule.config.num_train_timesteps)
picks = [0, 5, 9]  # one good image, one scratch, one spot
recon = ddim_reconstruct(
    banks.model,
    data.test[picks],
    schedule,
    t0=t0,
    steps=5,
    noise=torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(1234)),
).clamp(-1, 1)
fig, axes = plt.subplots(len(picks), 4, figsize=(5, 1.3 * len(picks)))
for row, i in enumerate(picks):
    for col, (img, title) in enumerate(
        (
            (data.test[i], data.defect_types[i]),
            (recon[row], "reconstruction"),
            (maps[i], "anomaly map"),
            (data.masks[i], "mask"),
        )
    ):
        ax = axes[row, col]
        ax.imshow((img.permute(1, 2, 0) + 1) / 2 if img.dim() == 3 else img, cmap=None if img.dim() == 3 else "inferno")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
plt.tight_layout()
plt.show()
