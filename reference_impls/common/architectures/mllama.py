"""Mllama (Llama 3.2 Vision): refused. Images enter through cross-attention layers, the sequence
holds a single ``<|image|>`` token, so there are no visual tokens to drop and no visual KV entries."""

from __future__ import annotations

from reference_impls.common.architectures import refuse_architecture

MLLAMA_REASON = (
    "mllama feeds images through cross-attention layers (one <|image|> token in the sequence): "
    "no visual tokens or visual KV entries for the atlas methods to act on"
)
refuse_architecture("mllama", MLLAMA_REASON)
