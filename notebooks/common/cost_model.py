# %% [markdown]
# # Where LVLM inference time goes: a stage cost model on the roofline
#
# The seed survey splits the latency of a vision-language model into stages: the vision encoder
# and the language model's prefill make up the time to first token (TTFT), and every later token
# costs one decode step (TPOT). Whether a stage is limited by compute or by memory traffic
# follows from its arithmetic intensity (FLOPs per byte moved) compared with the GPU's ridge
# point (peak FLOP/s divided by memory bandwidth). This notebook evaluates the stage cost model
# in reference_impls/common/cost_model.py for Qwen2.5-VL-7B and -72B on A100, H100 SXM and H200
# data-sheet numbers: it reproduces the survey's example (72B, 20 images: more than 40K tokens
# and more than 13 GB of KV cache), places each stage on the roofline, and shows how TTFT, TPOT
# and the KV cache grow with the number of images. These are model estimates, not measurements.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from reference_impls.common.cost_model import (
    GPUS,
    QWEN25_VL_7B,
    QWEN25_VL_72B,
    Workload,
    kv_cache_bytes,
    stage_costs,
    visual_tokens,
)

QUICK = os.environ.get("ATLAS_QUICK") == "1"

# %% [markdown]
# ## The survey's example
# One merged visual token covers 28 x 28 pixels. We assume 1260 x 1260 images (45 x 45 = 2,025
# tokens each), the smallest square size for which 20 images exceed 40K tokens.

# %%
work = Workload(images=20, width=1260, height=1260)
tokens = work.tokens(QWEN25_VL_72B)
print(f"tokens per image: {visual_tokens(1260, 1260)}; prompt tokens for 20 images: {tokens:,}")
print(
    f"KV cache of Qwen2.5-VL-72B (bf16, 80 layers, 8 KV heads x 128): {kv_cache_bytes(QWEN25_VL_72B, tokens) / 1e9:.2f} GB"
)
print(
    f"per token: {kv_cache_bytes(QWEN25_VL_72B, 1) / 1024:.0f} KiB (72B) vs {kv_cache_bytes(QWEN25_VL_7B, 1) / 1024:.0f} KiB (7B)"
)

# %% [markdown]
# ## Stages on the roofline
# Each point is one stage for Qwen2.5-VL-7B with 4 images. Encoding and prefill are far to the
# right of the ridge (compute-bound); a decode step at batch 1 is far to the left: it reads all
# weights and the whole KV cache to produce one token. Batching decode moves it right.

# %%
fig, axes = plt.subplots(1, len(GPUS), figsize=(15, 4), sharey=True)
intensity = np.logspace(-1, 5, 200)
for ax, gpu in zip(axes, GPUS):
    ax.loglog(intensity, np.minimum(gpu.flops, intensity * gpu.bandwidth) / 1e12, color="black")
    ax.axvline(gpu.ridge, color="grey", linestyle=":")
    for batch, marker in ((1, "o"), (64, "s")):
        costs = stage_costs(QWEN25_VL_7B, Workload(images=4, batch=batch), gpu)
        for stage, colour in (("encode", "tab:blue"), ("prefill", "tab:orange"), ("decode", "tab:red")):
            cost = costs[stage]
            attained = cost.flops / cost.seconds / 1e12
            ax.scatter(cost.intensity, attained, color=colour, marker=marker, label=f"{stage}, batch {batch}")
    ax.set_title(f"{gpu.name} (ridge {gpu.ridge:.0f} FLOP/B)")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
axes[0].set_ylabel("attainable TFLOP/s")
axes[-1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Growth with the number of images
# TTFT grows faster than linearly (attention is quadratic in the prompt length); TPOT and the
# KV cache grow linearly, because every decode step reads the whole cache.

# %%
counts = [1, 2, 4, 8] if QUICK else [1, 2, 4, 8, 12, 16, 20, 24, 32]
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for model in (QWEN25_VL_7B, QWEN25_VL_72B):
    for gpu in GPUS:
        rows = [stage_costs(model, Workload(images=n), gpu) for n in counts]
        label = f"{model.name}, {gpu.name}"
        axes[0].plot(counts, [r["ttft_s"] for r in rows], marker="o", label=label)
        axes[1].plot(counts, [1000 * r["tpot_s"] for r in rows], marker="o", label=label)
    axes[2].plot(
        counts,
        [kv_cache_bytes(model, Workload(images=n).tokens(model)) / 1e9 for n in counts],
        marker="o",
        label=model.name,
    )
axes[0].set_ylabel("TTFT (s)")
axes[1].set_ylabel("TPOT (ms)")
axes[2].set_ylabel("KV cache (GB, bf16)")
for ax in axes:
    ax.set_xlabel("images (1260 x 1260)")
axes[0].legend(fontsize=6)
axes[2].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Stage shares for one request
# For Qwen2.5-VL-7B on an H100 with 8 images, the share of encoding in TTFT, and what keeping
# only a fraction of the visual tokens before the language model would save (prefill and KV
# shrink; the encoder still sees every patch).

# %%
from reference_impls.common.cost_model import H100_SXM  # noqa: E402

full = stage_costs(QWEN25_VL_7B, Workload(images=8), H100_SXM)
print(
    f"encode {1000 * full['encode'].seconds:.1f} ms, prefill {1000 * full['prefill'].seconds:.1f} ms, "
    f"decode {1000 * full['tpot_s']:.2f} ms/token, KV {full['kv_bytes'] / 1e9:.2f} GB"
)
for keep in (0.5, 0.25, 0.1):
    n = round(full["visual_tokens"] * keep) + Workload().text_tokens
    kv = kv_cache_bytes(QWEN25_VL_7B, n)
    prefill_scale = (2 * n * QWEN25_VL_7B.llm_params() + 2 * QWEN25_VL_7B.layers * n * n * QWEN25_VL_7B.hidden) / full[
        "prefill"
    ].flops
    print(f"keep {keep:.0%} of visual tokens: prefill x{prefill_scale:.2f}, KV {kv / 1e9:.2f} GB")
