# %% [markdown]
# # ToyVLM: a Qwen2.5-VL trained from scratch on synthetic scenes
#
# ToyVLM is the small model on which LVLM Atlas measures what token pruning and KV-cache
# compression cost. It is a real Qwen2.5-VL (windowed vision tower, 2x2 patch merger, M-RoPE
# language model) with 0.67M parameters, trained on CPU to answer one-word questions about
# scenes of coloured shapes: four 224 px images per sample, so 256 visual tokens, of which the
# answer lives in one or a few. This notebook shows a sample, the prompt layout, the model's
# answers, and how accuracy falls when random visual tokens are dropped before the language
# model.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_impls.common.harness import evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.scenes import caption
from reference_impls.common.toyvlm import load_toyvlm

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)

toy = load_toyvlm()
manifest = toy.manifest
print(
    f"{manifest['parameters']:,} parameters; held-out accuracy at training time: {manifest['held_out_accuracy']['all']:.3f}"
)

# %% [markdown]
# ## One sample
# Objects fill one 28 px cell each (one merged visual token); small grey specks are distractors.

# %%
sample = toy.samples(1, seed=11)[0]
fig, axes = plt.subplots(1, len(sample.scene.images), figsize=(12, 3))
for k, (ax, image) in enumerate(zip(axes, sample.scene.images)):
    ax.imshow(image)
    ax.set_title(f"image {k + 1}")
    ax.axis("off")
plt.show()
print("caption:", caption(sample.scene))
print("question:", sample.qa.question, "| answer:", sample.qa.answer)

# %% [markdown]
# ## The prompt
# The question comes first, then each image as `<vision_start> <image> x 64 <vision_end>`; the
# model's next token after the final `answer` word is its answer.

# %%
inputs = toy.collate([sample])
ids = inputs["input_ids"][0].tolist()
words = [toy.vocab.words[i] for i in ids]
compact = []
for word in words:
    if compact and word == "<image>" and compact[-1].startswith("<image>"):
        count = int(compact[-1].split("x")[-1]) + 1 if "x" in compact[-1] else 2
        compact[-1] = f"<image>x{count}"
    else:
        compact.append(word)
print(" ".join(compact))
print("pixel_values", tuple(inputs["pixel_values"].shape), "image_grid_thw", inputs["image_grid_thw"].tolist())
with torch.no_grad():
    logits = toy.model(**inputs).logits[0, -1]
top = logits.softmax(-1).topk(3)
print("top answers:", [(toy.vocab.words[i], round(p, 3)) for p, i in zip(top.values.tolist(), top.indices.tolist())])

# %% [markdown]
# ## Accuracy vs visual tokens kept (random pruning)
# Dropping random visual tokens often removes the one that holds the answer.

# %%
n = 16 if QUICK else 80
samples = toy.samples(n, seed=5)
budgets = [1.0, 0.5, 0.25, 0.1]
results = [evaluate(toy, RandomPruning(budget=b), samples=samples, decode_samples=0) for b in budgets]
for budget, result in zip(budgets, results):
    print(
        f"budget {budget:4.2f}: accuracy {result['accuracy']:.2f}, visual tokens {result['visual_tokens']:.0f}, "
        f"KV {result['kv_bytes'] / 1024:.0f} KiB"
    )
plt.plot([r["visual_tokens"] for r in results], [r["accuracy"] for r in results], marker="o")
plt.xlabel("visual tokens kept (of 256)")
plt.ylabel("accuracy")
plt.title(f"ToyVLM, random pruning, {n} held-out samples")
plt.show()
print("accuracy by question kind at 25%:", {k: round(v, 2) for k, v in results[2]["accuracy_by_kind"].items()})
print(
    "chance level of a kind-aware guess is about",
    np.round(1 / np.array([6, 5, 2, 4]), 2).tolist(),
    "(colour, shape, presence, count)",
)
