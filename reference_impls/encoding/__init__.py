"""Encoding-stage methods: they act on the vision tower and its merged visual tokens, before the
language model sees them (projector pooling, keyframe selection, temporal pooling and merging,
adaptive resolution, ToMe, PruMerge, VisionZip) plus a cost analysis of the Qwen2.5-VL vision tower.

Every token-reducing method here works on the *post-merger* features in raster order (one row per
28x28 pixel cell) and hands each kept or merged token a representative original token, whose
3-D M-RoPE position it takes; see ``docs/notes/transformers5.md`` §6 and §10.
"""
