"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: 3-D M-RoPE positions, ``<vision_start>``/``<vision_end>`` markers.

Qwen3-VL adds DeepStack: the first ``len(deepstack_visual_indexes)`` language layers add extra
vision features to the visual positions of their output, so a visual token dropped before one
of them has no slot for its feature (refused), and the encoding-stage rebuild would lose them.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter


@dataclass(frozen=True)
class QwenAdapter(Adapter):
    positions: str = "mrope"
    vision_attr: str = "visual"
    encoder_context: str | None = None

    def marker_token_ids(self, config) -> tuple[int, ...]:
        return (config.vision_start_token_id, config.vision_end_token_id)

    def index_rotary(self, model):
        rotary = self.text_model(model).rotary_emb  # M-RoPE: the same index on the three axes
        return lambda hidden, positions: rotary(hidden, positions[None].expand(3, -1, -1))


@dataclass(frozen=True)
class Qwen3Adapter(QwenAdapter):
    encoder_context: str | None = "its DeepStack visual features would be dropped"

    def deepstack_layers(self, config) -> tuple[int, ...]:
        return tuple(range(len(config.vision_config.deepstack_visual_indexes)))


register_adapter(QwenAdapter("qwen2-vl"), "qwen2_vl")
register_adapter(QwenAdapter("qwen2.5-vl", attention_recorder=True), "qwen2_5_vl")
register_adapter(Qwen3Adapter("qwen3-vl"), "qwen3_vl")
