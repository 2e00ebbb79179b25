"""Gemma 3: SigLIP tower, ``<start_of_image>``/``<end_of_image>`` markers and interleaved
sliding-window layers (read from ``text_config.layer_types``; see :meth:`Adapter.sliding_windows`)."""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter, UnsupportedFeature


@dataclass(frozen=True)
class Gemma3Adapter(Adapter):
    decoder_norms: str = "sandwich"

    def marker_token_ids(self, config) -> tuple[int, ...]:
        return (config.boi_token_id, config.eoi_token_id)

    def index_rotary(self, model):
        raise UnsupportedFeature(
            "renumbered positions are not supported on gemma3 "
            "(its sliding-window and full layers use different rotary embeddings)"
        )


register_adapter(Gemma3Adapter("gemma3"), "gemma3")
