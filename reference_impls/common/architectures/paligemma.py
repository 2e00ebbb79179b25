"""PaliGemma: SigLIP tower, image tokens first, Gemma text model with 1-D positions."""

from __future__ import annotations

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter

register_adapter(Adapter("paligemma"), "paligemma")
