"""Tiny random-init models of every supported VLM family, built in code (no downloads, CPU, < 1 s each).

The architecture matrix (tests, coverage table) runs every method on these. Each model has two
text layers, hidden size 32-64 and a one- or two-layer vision tower; only the sizes are small,
the modelling code is transformers' own. :func:`tiny_vlm` returns the model and inputs the way a
processor would make them (the number of image tokens is read back from the model's own
``get_image_features``, so anyres newlines and pixel shuffles count as they do in real use).

Examples:
    >>> model, inputs = tiny_vlm("llava")
    >>> int((inputs["input_ids"] == model.config.image_token_id).sum())
    16
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    MllamaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

__all__ = ["ARCHITECTURES", "tiny_config", "tiny_vlm"]

VOCAB = 128
BOS, EOS, PAD, START, IMAGE, VIDEO, END = 0, 1, 2, 3, 4, 5, 6
FIRST_TEXT = 7
_TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "pad_token_id": PAD,
    "max_position_embeddings": 512,
}
_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
    "projection_dim": 32,
}
_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
}


def _qwen2vl() -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config=dict(_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 4,
            "mlp_ratio": 1,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )


def _qwen3vl() -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(
            _TEXT,
            head_dim=8,
            rope_scaling={
                "rope_type": "default",
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_heads": 4,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )


def _llava() -> LlavaConfig:
    return LlavaConfig(
        vision_config=dict(_CLIP, model_type="clip_vision_model"),
        text_config=dict(_TEXT, model_type="llama"),
        image_token_id=IMAGE,
        projector_hidden_act="gelu",
    )


def _llava_next() -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=dict(_CLIP, model_type="clip_vision_model"),
        text_config=dict(_TEXT, model_type="llama"),
        image_token_id=IMAGE,
        image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]],
    )


def _llava_onevision() -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        vision_config=dict(_SIGLIP, model_type="siglip_vision_model"),
        text_config=dict(_TEXT, model_type="qwen2"),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]],
        vision_feature_layer=-1,
    )


def _internvl() -> InternVLConfig:
    return InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": [32, 32],
            "patch_size": [4, 4],
        },
        text_config=dict(_TEXT, model_type="qwen2"),
        image_token_id=IMAGE,
        downsample_ratio=0.5,
    )


def _gemma3() -> Gemma3Config:
    text = dict(
        _TEXT,
        head_dim=8,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
    )
    return Gemma3Config(
        vision_config=dict(_SIGLIP),
        text_config=text,
        mm_tokens_per_image=16,
        image_token_index=IMAGE,
        boi_token_index=START,
        eoi_token_index=END,
    )


def _idefics3(cls=Idefics3Config) -> Idefics3Config:
    return cls(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 4,
        },
        text_config=dict(_TEXT, model_type="llama"),
        image_token_id=IMAGE,
        scale_factor=2,
    )


def _paligemma() -> PaliGemmaConfig:
    return PaliGemmaConfig(
        vision_config=dict(_SIGLIP, projection_dim=32),
        text_config=dict(_TEXT, model_type="gemma", head_dim=8),
        image_token_index=IMAGE,
        projection_dim=32,
    )


def _mllama() -> MllamaConfig:
    return MllamaConfig(text_config=dict(_TEXT, cross_attention_layers=[1]), image_token_index=IMAGE)


_CONFIGS: dict[str, tuple[Callable, type | None]] = {
    "qwen2-vl": (_qwen2vl, Qwen2VLForConditionalGeneration),
    "qwen2.5-vl": (None, None),
    "qwen3-vl": (_qwen3vl, Qwen3VLForConditionalGeneration),
    "llava": (_llava, LlavaForConditionalGeneration),
    "llava-next": (_llava_next, LlavaNextForConditionalGeneration),
    "llava-onevision": (_llava_onevision, LlavaOnevisionForConditionalGeneration),
    "internvl": (_internvl, InternVLForConditionalGeneration),
    "gemma3": (_gemma3, Gemma3ForConditionalGeneration),
    "idefics3": (_idefics3, Idefics3ForConditionalGeneration),
    "smolvlm": (lambda: _idefics3(SmolVLMConfig), SmolVLMForConditionalGeneration),
    "paligemma": (_paligemma, PaliGemmaForConditionalGeneration),
    "mllama": (_mllama, None),
}
ARCHITECTURES: tuple[str, ...] = tuple(_CONFIGS)
"""Matrix columns, in display order."""


def tiny_config(arch: str):
    """The tiny config of ``arch`` (the only thing built for refused architectures)."""
    if arch == "qwen2.5-vl":
        from reference_impls.common.tiny import tiny_qwen25vl_config

        return tiny_qwen25vl_config(num_layers=2)
    config = _CONFIGS[arch][0]()
    config._attn_implementation = "sdpa"
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = "sdpa"
    return config


def _pixels(arch: str, config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    if arch in ("qwen2-vl", "qwen3-vl"):
        vision = config.vision_config
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        return {
            "pixel_values": torch.randn(64, patch_dim, generator=generator),
            "image_grid_thw": torch.tensor([[1, 8, 8]]),
        }
    if arch in ("llava-next", "llava-onevision"):
        return {
            "pixel_values": torch.randn(1, 5, 3, 16, 16, generator=generator),
            "image_sizes": torch.tensor([[32, 32]]),
        }
    if arch in ("idefics3", "smolvlm"):
        return {
            "pixel_values": torch.randn(1, 2, 3, 32, 32, generator=generator),
            "pixel_attention_mask": torch.ones(1, 2, 32, 32, dtype=torch.bool),
        }
    if arch == "internvl":
        return {"pixel_values": torch.randn(1, 3, 32, 32, generator=generator)}
    return {"pixel_values": torch.randn(1, 3, 16, 16, generator=generator)}


def tiny_vlm(arch: str, seed: int = 0, **text_overrides) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny random model of ``arch`` in eval mode and one prompt with one image (batch 1).

    ``text_overrides`` set text-config fields (e.g. ``sliding_window=8``) before the model is built.
    """
    if arch == "qwen2.5-vl":
        model = tiny_qwen25vl(seed, num_layers=2)
        return model, tiny_inputs(model, grids=((8, 8),), seed=seed)
    _build, cls = _CONFIGS[arch]
    if cls is None:
        raise ValueError(f"no tiny model for {arch!r} (refused architecture)")
    torch.manual_seed(seed)
    config = tiny_config(arch)
    for key, value in text_overrides.items():
        setattr(config.get_text_config(), key, value)
    model = cls(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):  # Gemma 3 initialises it to zeros: images would be ignored
                parameter.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # always generate the requested number of tokens
    generator = torch.Generator().manual_seed(seed)
    pixels = _pixels(arch, model.config, generator)
    from reference_impls.common.architectures import adapter_for

    n_image = adapter_for(model).count_image_tokens(model, pixels)
    image_id = model.config.image_token_id

    def text(count: int) -> list[int]:
        return torch.randint(FIRST_TEXT, VOCAB, (count,), generator=generator).tolist()

    markers = {
        "qwen2-vl": (START, END),
        "qwen3-vl": (START, END),
        "gemma3": (START, END),
    }
    before, after = markers.get(arch, ((), ()))
    before, after = (
        ([before] if isinstance(before, int) else []),
        ([after] if isinstance(after, int) else []),
    )
    if arch == "paligemma":  # PaliGemma puts the image first, then <bos> and the prompt
        ids = [image_id] * n_image + [BOS] + text(9)
    else:
        ids = [BOS] + text(4) + before + [image_id] * n_image + after + text(4)
    input_ids = torch.tensor([ids])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        **pixels,
    }
    if arch in ("qwen2-vl", "qwen3-vl"):
        inputs["mm_token_type_ids"] = (input_ids == image_id).long()
    if arch in ("paligemma", "gemma3"):
        inputs["token_type_ids"] = (input_ids == image_id).long()
    return model, inputs
