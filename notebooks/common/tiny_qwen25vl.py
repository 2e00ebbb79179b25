# %% [markdown]
# # A tiny Qwen2.5-VL in code
#
# Every test in LVLM Atlas builds its model in code instead of downloading one. This notebook
# shows what such a model is: the real Qwen2.5-VL architecture from transformers with tiny sizes,
# random weights, and inputs laid out as the Qwen2.5-VL processor lays them out. It shows where
# the visual tokens sit in the prompt (found from the token ids in the config), the 3-D M-RoPE
# positions they get, and that generation runs.

# %%
import os

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl, visual_spans

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)

model = tiny_qwen25vl(seed=0)
parameters = sum(parameter.numel() for parameter in model.parameters())
print(
    f"{parameters:,} parameters; text layers: {model.config.text_config.num_hidden_layers}, "
    f"KV heads: {model.config.text_config.num_key_value_heads}"
)

# %% [markdown]
# Two images: an 8x8 patch grid (16 merged visual tokens after the 2x2 merge) and a 4x8 grid (8 tokens).

# %%
inputs = tiny_inputs(model, grids=((8, 8), (4, 8)))
ids = inputs["input_ids"][0]
print("sequence length:", ids.numel())
print("visual spans [start, end):", visual_spans(ids, model.config))

# %% [markdown]
# M-RoPE gives each token a (temporal, height, width) position. Text tokens have three equal
# components; a visual token's height and width follow its place on the image grid.

# %%
position_ids, rope_deltas = model.model.get_rope_index(
    inputs["input_ids"],
    mm_token_type_ids=inputs["mm_token_type_ids"],
    image_grid_thw=inputs["image_grid_thw"],
    attention_mask=inputs["attention_mask"],
)
first_image = visual_spans(ids, model.config)[0]
print("positions of the first 6 tokens of image 1 (t, h, w):")
print(position_ids[:, 0, first_image[0] : first_image[0] + 6].T.tolist())

# %%
new_tokens = 4 if QUICK else 16
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
print("generated ids:", output[0, ids.numel() :].tolist())
