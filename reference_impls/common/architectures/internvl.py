"""InternVL (2.5/3): InternViT tower, pixel shuffle, Qwen2/Llama text model with 1-D positions."""

from __future__ import annotations

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter

register_adapter(Adapter("internvl"), "internvl")
