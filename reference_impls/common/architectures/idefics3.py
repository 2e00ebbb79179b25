"""Idefics3 and SmolVLM: SigLIP-style tower (``vision_model``), pixel shuffle, Llama text model
called ``text_model``, 1-D positions."""

from __future__ import annotations

from reference_impls.common.architectures import register_adapter
from reference_impls.common.architectures.base import Adapter

register_adapter(Adapter("idefics3", text_attr="text_model", vision_attr="vision_model"), "idefics3")
register_adapter(Adapter("smolvlm", text_attr="text_model", vision_attr="vision_model"), "smolvlm")
