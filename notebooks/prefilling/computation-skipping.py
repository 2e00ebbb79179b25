# %% [markdown]
# # Computation skipping for visual tokens: operation skipping (GSOP rule) on ToyVLM v2
#
# Token pruning removes a visual token from every later operation. Operation skipping keeps every
# visual token in the sequence and skips single operations on it instead: in the deeper layers the
# visual tokens skip their attention update (as queries) and their FFN, so they pass those layers
# unchanged, while the text tokens still attend to them as keys and values. The rule follows GSOP's
# code (per layer, index sets for keys/values, queries and FFN; the updates are added to those
# tokens only); GSOP searches which operations to skip per model, here a fixed schedule skips them
# in the last `1 - budget` share of the layers, training-free.
#
# Below: the patched layers on one held-out sample (how much each layer changes the visual and
# the text tokens), then the committed benchmark (`computation-skipping-toyvlm-v2-short`). One
# forward pass and a results file: the quick setting (ATLAS_QUICK=1) is the same notebook.

# %%
import matplotlib.pyplot as plt
import torch

from reference_impls.common.architectures import adapter_for
from reference_impls.common.results import RESULTS_DIR, load_results
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.prefilling.op_skip import OperationSkip

torch.set_num_threads(1)
bundle = load_toyvlm_v2()
model = bundle.model
sample = bundle.samples(1, seed=10)[0]
inputs = bundle.collate([sample])
adapter = adapter_for(model)
layers = adapter.language_layers(model)
visual = adapter.visual_mask(inputs["input_ids"], model.config)[0]
print(f"{len(layers)} LLM layers; {int(visual.sum())} visual tokens of {visual.numel()}")

# %% [markdown]
# Each layer's update to the hidden states (mean norm of output minus input), for the visual and
# the text tokens, without and with operation skipping at budget 0.5 (layers 3-5 skip).

# %%


def layer_updates(method=None) -> tuple[list[float], list[float], torch.Tensor]:
    changes = []
    hooks = [
        layer.register_forward_hook(
            lambda m, a, k, out: changes.append(out - (a[0] if a else k["hidden_states"])), with_kwargs=True
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            if method is None:
                logits = model(**inputs).logits[0, -1]
            else:
                with method(model):
                    logits = model(**inputs).logits[0, -1]
    finally:
        for hook in hooks:
            hook.remove()
    norms = [c[0].norm(dim=-1) for c in changes]
    return [float(n[visual].mean()) for n in norms], [float(n[~visual].mean()) for n in norms], logits


method = OperationSkip(budget=0.5)
full_visual, full_text, full_logits = layer_updates()
skip_visual, skip_text, skip_logits = layer_updates(method)
print("stats:", method.stats)
for i in range(len(layers)):
    print(
        f"layer {i}: visual {full_visual[i]:6.2f} -> {skip_visual[i]:6.2f}   text {full_text[i]:6.2f} -> {skip_text[i]:6.2f}"
    )
words = bundle.vocab.words
print("question:", sample.qa.question, "| answer:", sample.qa.answer)
print("first reply word, full:", words[int(full_logits.argmax())], "| op-skip:", words[int(skip_logits.argmax())])
plt.figure(figsize=(6, 3.5))
x = range(len(layers))
plt.plot(x, full_visual, "o-", label="visual, full")
plt.plot(x, skip_visual, "o--", label="visual, op-skip 0.5")
plt.plot(x, full_text, "s-", label="text, full")
plt.plot(x, skip_text, "s--", label="text, op-skip 0.5")
plt.xlabel("LLM layer")
plt.ylabel("mean update norm")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# What one skipping layer costs here: layer 4 on this sample (1,098 tokens), unmodified against the
# visual tokens skipping their FFN, their query, or both (best of 3 on a shared CPU, one thread;
# the skipping path gathers rows and passes sdpa an explicit mask instead of its causal flag).

# %%
import time

from reference_impls.common.tiny import visual_mask as _visual_mask
from reference_impls.prefilling.op_skip import operation_indices, skip_layer

captured = {}
hook = layers[4].register_forward_pre_hook(
    lambda m, a, k: captured.update(hidden=a[0] if a else k["hidden_states"], rope=k["position_embeddings"]),
    with_kwargs=True,
)
with torch.no_grad():
    model(**inputs)
hook.remove()
hidden, rope = captured["hidden"], captured["rope"]
groups = [_visual_mask(inputs["input_ids"], model.config)[0].nonzero()[:, 0]]


def best_ms(run, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            run()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


print(f"unmodified layer: {best_ms(lambda: layers[4](hidden, position_embeddings=rope)):6.1f} ms")
for ops in (("mlp",), ("query",), ("query", "mlp")):
    _, query, mlp = operation_indices(hidden.shape[1], groups, [(0, op) for op in ops])
    print(f"skip {'+'.join(ops):10s}: {best_ms(lambda: skip_layer(layers[4], hidden, rope, query, mlp)):6.1f} ms")

# %% [markdown]
# The committed benchmark: exact match on the short suite (16 images of 64 tokens, the question
# last) against the share of the visual tokens' linear-layer FLOPs still computed, with random
# pruning before the LLM at equal FLOPs and the visual tokens withdrawn at the first skipping layer.
# Run with `python -m reference_impls.bench.computation_skipping --suite short` (10 seeds, about
# 200 s each on one thread of a shared CPU).

# %%
path = RESULTS_DIR / "computation-skipping-toyvlm-v2-short.json"
if path.exists():
    results = load_results(path)
    print(results.notes)
    plt.figure(figsize=(6, 4))
    for name in dict.fromkeys(row["method"] for row in results.rows):
        points = sorted(
            (r["visual_flops"], r["accuracy"], r["accuracy_ci"]) for r in results.rows if r["method"] == name
        )
        plt.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[p[2] for p in points],
            marker="o",
            capsize=3,
            label=name,
        )
    for row in results.rows:
        print(
            f"{row['method']:24s} budget {row['budget']:.2f}  FLOPs {row['visual_flops']:.3f}  "
            f"exact match {row['accuracy']:5.1f} +-{row['accuracy_ci']:4.1f}  LLM prefill {row['llm_prefill_ms']:6.1f} ms"
        )
    plt.xlabel("visual linear-layer FLOPs computed")
    plt.ylabel("exact match (%)")
    plt.legend(fontsize=8)
    plt.show()
    tests = RESULTS_DIR / "computation-skipping-toyvlm-v2-short-tests.json"
    if tests.exists():
        for row in load_results(tests).rows:
            print({k: row[k] for k in row if k in ("metric", "verdict")})
else:
    print("no committed results yet:", path.name)
