# %% [markdown]
# # KIVI: 2- and 4-bit KV cache (keys per channel, values per token)
#
# KIVI evicts nothing; it stores keys quantised per channel over groups of tokens and values
# quantised per token, with a full-precision window of recent tokens. The notebook shows why the
# two axes differ (key outliers sit in a few channels), the reconstruction error of both choices,
# an exact byte breakdown of the cache (packed codes, scales, zero points, residual) and the
# next-token drift from the full cache at 2 and 4 bits. The model is ToyVLM v2 on one held-out
# sample of its long suite (16 images first, the question last, a multi-token reply), as the KV
# benchmark runs it; a random-init tiny Qwen2.5-VL stands in only when the checkpoint is missing.

# %%
import os

import matplotlib.pyplot as plt
import torch
from transformers import DynamicCache

from reference_impls.decoding.cache import greedy_decode
from reference_impls.decoding.kivi import KIVI, dequantize, quantize
from reference_impls.decoding.kv_demo import demo_model_and_prompt

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
model, inputs, name = demo_model_and_prompt()
n = inputs["input_ids"].shape[1]
print(f"model: {name}; prompt {n} tokens")

# %% [markdown]
# ## Keys: per-channel vs per-token quantisation error (layer 0, 2 bits)

# %%
cache = DynamicCache()
with torch.no_grad():
    model(**inputs, cache=cache, use_cache=True)
keys = cache.layers[0].keys[:, :, : (n // 16) * 16]  # (1, H, S, D)
plt.imshow(keys[0, 0].abs().T, aspect="auto", cmap="viridis")
plt.xlabel("token")
plt.ylabel("channel")
plt.title("|key| of layer 0, head 0")
plt.show()
groups = keys.reshape(1, keys.shape[1], -1, 16, keys.shape[-1])
for label, dim in {"per channel (over 16 tokens)": 3, "per token (over channels)": 4}.items():
    packed, scale, zero = quantize(groups, 2, dim=dim)
    error = dequantize(packed, scale, zero, 2) - groups
    print(f"{label}: mean |error| = {error.abs().mean():.4f}")

# %% [markdown]
# ## Exact bytes and drift from the full cache

# %%
steps = 3 if QUICK else 8
ref = model.generate(
    **inputs,
    max_new_tokens=steps,
    min_new_tokens=steps,
    do_sample=False,
    output_logits=True,
    return_dict_in_generate=True,
)
ref_tokens, ref_logp = ref.sequences[:, n:], torch.stack(ref.logits)[:, 0].log_softmax(-1)
for bits in (2, 4):
    method = KIVI(bits=bits, group_size=8, residual_length=16)  # value groups of 8 channels divide head dim 32
    with method(model):
        _, logits = greedy_decode(
            model, inputs, method.make_cache(model, inputs["input_ids"]), steps, forced=ref_tokens
        )
    layer = method.cache.layers[0]
    quantized = (layer.quantized_keys or []) + (layer.quantized_values or [])
    parts = dict(zip(["key codes", "key scales", "key zeros", "value codes", "value scales", "value zeros"], quantized))
    breakdown = {k: v.element_size() * v.nelement() for k, v in parts.items()}
    breakdown["residual (fp)"] = sum(t.element_size() * t.nelement() for t in (layer.keys, layer.values))
    report = method.cache.byte_report()
    kl = torch.nn.functional.kl_div(logits.log_softmax(-1), ref_logp, log_target=True, reduction="batchmean")
    print(
        f"{bits} bits: resident {report['resident_bytes']} B = {report['resident_bytes'] / report['full_bytes']:.3f} of full; KL {float(kl):.2e}"
    )
    plt.bar([f"{k}\n{bits}b" for k in breakdown], list(breakdown.values()))
plt.xticks(rotation=90, fontsize=7)
plt.ylabel("bytes (layer 0)")
plt.show()
