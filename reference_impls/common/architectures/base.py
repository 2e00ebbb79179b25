"""The :class:`Adapter` base: the defaults most VLM families share (LLaVA-style layout, 1-D positions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Adapter", "UnsupportedArchitecture", "UnsupportedFeature"]


class UnsupportedFeature(NotImplementedError):
    """A method needs something this architecture does not offer (or we have not ported)."""


class UnsupportedArchitecture(UnsupportedFeature):
    """No method of the atlas runs on this architecture."""


@dataclass(frozen=True)
class Adapter:
    """How the methods reach one VLM family (a stateless description; one instance per family).

    The defaults describe the common layout ``model.model.language_model.layers[i].self_attn``,
    ``model.model.vision_tower`` and one image token id in the config.
    """

    name: str
    """Column name in the coverage table, e.g. ``"llava-next"``."""
    positions: str = "1d"
    """``"mrope"`` (3-D Qwen positions from ``get_rope_index``) or ``"1d"``."""
    text_attr: str = "language_model"
    vision_attr: str = "vision_tower"
    encoder_context: str | None = "its 1-D positions and feature path are not ported (only Qwen2-VL/Qwen2.5-VL are)"
    """Why :func:`~reference_impls.common.visual_tokens.build_context` (the encoding-stage
    inputs rebuild) cannot run here; ``None`` when it can."""
    attention_recorder: bool = False
    """Whether the vision tower has the CLS-free attention recorder VisionZip needs."""
    decoder_norms: str = "pre"
    """Where a language layer normalises: ``"pre"`` (``input_layernorm`` before attention,
    ``post_attention_layernorm`` before the FFN: LLaMA, Qwen, Gemma) or ``"sandwich"`` (Gemma 2/3:
    also after attention, and ``pre/post_feedforward_layernorm`` around the FFN). Methods that
    recompute a layer from its parts read it (operation skipping)."""

    # --- modules -----------------------------------------------------------------------------
    @staticmethod
    def inner(model: nn.Module) -> nn.Module:
        """The base model under a ``...ForConditionalGeneration`` (or the model itself)."""
        return model.model if hasattr(model, "lm_head") else model

    def text_model(self, model: nn.Module) -> nn.Module:
        """The text decoder (its ``layers`` are the language layers)."""
        return getattr(self.inner(model), self.text_attr)

    def language_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.text_model(model).layers

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The self-attention module of every language layer, in order."""
        return [layer.self_attn for layer in self.language_layers(model)]

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return getattr(self.inner(model), self.vision_attr)

    # --- tokens ------------------------------------------------------------------------------
    def image_token_id(self, config) -> int:
        return config.image_token_id

    def video_token_id(self, config) -> int | None:
        return getattr(config, "video_token_id", None)

    def marker_token_ids(self, config) -> tuple[int, ...]:
        """Tokens that frame an image (vision start/end, begin/end of image): neither text nor visual."""
        return ()

    def token_kinds(self, input_ids: torch.Tensor, config) -> torch.Tensor:
        """``0`` text, ``1`` image, ``2`` video; shape of ``input_ids``."""
        kinds = (input_ids == self.image_token_id(config)).long()
        video = self.video_token_id(config)
        if video is not None:
            kinds = torch.where(input_ids == video, 2, kinds)
        return kinds

    def visual_mask(self, input_ids: torch.Tensor, config) -> torch.Tensor:
        return self.token_kinds(input_ids, config) > 0

    def marker_mask(self, input_ids: torch.Tensor, config) -> torch.Tensor:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.marker_token_ids(config):
            mask |= input_ids == token
        return mask

    # --- layers with special rules -----------------------------------------------------------
    def deepstack_layers(self, config) -> tuple[int, ...]:
        """Language layers whose output receives extra visual features (Qwen3-VL DeepStack)."""
        return ()

    def sliding_windows(self, config) -> dict[int, int]:
        """``{layer: window}`` for language layers that attend to a sliding window only."""
        text = config.get_text_config()
        window = getattr(text, "sliding_window", None)
        types = getattr(text, "layer_types", None) or []
        if window is None:
            return {}
        return {i: int(window) for i, kind in enumerate(types) if kind == "sliding_attention"}

    def index_rotary(self, model: nn.Module):
        """``f(hidden, positions (B, n)) -> (cos, sin)``: the text model's rotary embedding at 1-D indices."""
        rotary = self.text_model(model).rotary_emb
        return lambda hidden, positions: rotary(hidden, positions)

    # --- vision ------------------------------------------------------------------------------
    def image_features(self, model: nn.Module, pixels: dict) -> torch.Tensor:
        """Post-projector features of the images in ``pixels`` (processor outputs), ``(N, D)``."""
        output = self.inner(model).get_image_features(**pixels, return_dict=True).pooler_output
        if isinstance(output, (list, tuple)):
            return torch.cat([o.reshape(-1, o.shape[-1]) for o in output])
        return output.reshape(-1, output.shape[-1])

    @torch.no_grad()
    def count_image_tokens(self, model: nn.Module, pixels: dict) -> int:
        """How many image placeholder tokens the prompt needs for ``pixels``."""
        return int(self.image_features(model, pixels).shape[0])

    # --- refusals ----------------------------------------------------------------------------
    def require_encoder_context(self, who: str) -> None:
        """Raise unless the encoding-stage inputs rebuild supports this architecture."""
        if self.encoder_context is not None:
            raise UnsupportedFeature(
                f"{who} rebuilds the language-model inputs after the vision tower, "
                f"not supported on this architecture: {self.encoder_context}"
            )

    def require_attention_recorder(self, who: str) -> None:
        if not self.attention_recorder:
            raise UnsupportedFeature(
                f"{who} needs a CLS-free attention recorder for this tower (only Qwen2.5-VL's windowed ViT has one)"
            )
