"""Decoding-stage methods: KV-cache compression, speculative decoding and efficient reasoning."""
