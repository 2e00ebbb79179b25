"""Decoding-stage methods: KV-cache compression (``cache`` and the ``kv_*``/family modules),
speculative decoding and efficient reasoning.

The KV-cache modules share :mod:`reference_impls.decoding.cache` (compressed cache layers with a
logical length, real per-head storage and exact byte counts) and the pure score and budget
functions of :mod:`reference_impls.decoding.kv_scores`.
"""
