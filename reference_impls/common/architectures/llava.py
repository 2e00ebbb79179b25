"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: CLIP/SigLIP tower, projector, 1-D positions.

The anyres families (NeXT, OneVision) append a learned ``image_newline`` feature after every row
of the high-resolution grid; it sits at an ``<image>`` placeholder like every other visual token,
so layer-drop and KV methods treat it as visual (what the placeholder mask says).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter


@dataclass(frozen=True)
class LlavaAdapter(Adapter):
    anyres_newline: bool = False
    """Whether image features include one newline token per grid row."""


register_adapter(LlavaAdapter("llava"), "llava")
register_adapter(LlavaAdapter("llava-next", anyres_newline=True), "llava_next")
register_adapter(LlavaAdapter("llava-onevision", anyres_newline=True), "llava_onevision")
