"""Stage cost model of LVLM inference: encode, prefill, decode on a roofline.

The seed survey (arXiv 2604.05546) splits LVLM latency into stages: time to first token is
the vision encoder plus the language model's prefill (TTFT = T_encode + T_prefill), each later
token costs one decode step (TPOT), and the KV cache grows with every visual token,
``2 * L * N * D * r_kv * P`` bytes. Whether a stage is compute- or memory-bound follows from
its arithmetic intensity (FLOPs per byte moved) against the GPU's ridge point (peak FLOP/s over
memory bandwidth): prefill and encoding of thousands of visual tokens sit far right of the
ridge (compute-bound), decoding at batch 1 far left (bound by reading weights and KV cache).
This module turns those formulas into numbers for any Qwen2-VL/Qwen2.5-VL-shaped model.

Paper: arXiv 2604.05546 (the stage decomposition and its example: Qwen2.5-VL-72B with 20
images gives more than 40K tokens and more than 13 GB of KV cache).

Examples:
    >>> from reference_impls.common.cost_model import QWEN25_VL_72B, Workload, kv_cache_bytes
    >>> work = Workload(images=20, width=1260, height=1260)
    >>> work.tokens() > 40_000, kv_cache_bytes(QWEN25_VL_72B, work.tokens()) / 1e9 > 13
    (True, True)

Conventions and deviations / guesses:
    - KV bytes: ``D`` is the model width ``H * d_head`` and ``r_kv = H_kv / H`` (grouped-query
      attention), so ``2 * L * N * D * r_kv * P = 2 * L * N * H_kv * d_head * P``: counted per
      KV head, never per query head.
    - The survey's example does not state the image size. 20 images must give more than 40K
      tokens, i.e. more than 2,000 tokens (28 x 28 pixels each) per image: at least 1.57
      megapixels. We assume 1260 x 1260 pixels (45 x 45 = 2,025 merged tokens per image), the
      smallest square multiple of 28 that satisfies it.
    - FLOPs count multiply-adds as 2; attention is causal in the LLM (half the score matrix),
      windowed (112 px windows) in the vision blocks except the full-attention ones. Bytes are
      weights read once per forward plus KV cache reads/writes; activations are ignored.
      Time per stage = max(FLOPs / peak, bytes / bandwidth): an upper bound on speed.
    - GPU numbers are dense (no sparsity) FP16/BF16 tensor-core peaks and HBM bandwidths from
      NVIDIA's public data sheets: A100 SXM 80 GB 312 TFLOP/s, 2,039 GB/s; H100 SXM 989
      TFLOP/s, 3,350 GB/s; H200 SXM 989 TFLOP/s, 4,800 GB/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GPU",
    "A100",
    "H100_SXM",
    "H200",
    "GPUS",
    "ModelSpec",
    "QWEN25_VL_7B",
    "QWEN25_VL_72B",
    "Workload",
    "StageCost",
    "visual_tokens",
    "kv_cache_bytes",
    "stage_costs",
]


@dataclass(frozen=True)
class GPU:
    name: str
    flops: float
    """Peak dense FP16/BF16 FLOP/s."""
    bandwidth: float
    """Memory bandwidth, bytes/s."""

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.flops / self.bandwidth


A100 = GPU("A100 SXM 80GB", 312e12, 2039e9)
H100_SXM = GPU("H100 SXM", 989e12, 3350e9)
H200 = GPU("H200 SXM", 989e12, 4800e9)
GPUS = (A100, H100_SXM, H200)


@dataclass(frozen=True)
class ModelSpec:
    """The sizes the cost model needs (language model and vision tower)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_intermediate: int = 3420
    vision_full_blocks: int = 4
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    window: int = 112
    bytes_per_param: float = 2.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def r_kv(self) -> float:
        return self.kv_heads / self.heads

    def llm_params(self) -> int:
        """Parameters of the decoder layers plus the output head (embeddings are a lookup)."""
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * self.hidden * 2 + 2 * self.hidden * kv
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp) + self.hidden * self.vocab

    def vision_params(self) -> int:
        d, f = self.vision_hidden, self.vision_intermediate
        embed = 3 * self.temporal_patch * self.patch**2 * d
        blocks = self.vision_depth * (4 * d * d + 3 * d * f)
        merged = d * self.merge**2
        return embed + blocks + merged * merged + merged * self.hidden

    @classmethod
    def from_config(cls, config: Any, name: str = "model") -> ModelSpec:
        """From a transformers Qwen2-VL / Qwen2.5-VL config."""
        text = getattr(config, "text_config", config)
        vision = config.vision_config
        full = getattr(vision, "fullatt_block_indexes", None)
        return cls(
            name=name,
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            heads=text.num_attention_heads,
            kv_heads=text.num_key_value_heads,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
            vision_depth=vision.depth,
            vision_hidden=vision.hidden_size if hasattr(vision, "out_hidden_size") else vision.embed_dim,
            vision_intermediate=getattr(vision, "intermediate_size", 4 * vision.hidden_size),
            vision_full_blocks=len(full) if full is not None else vision.depth,
            patch=vision.patch_size,
            merge=vision.spatial_merge_size,
            temporal_patch=vision.temporal_patch_size,
            window=getattr(vision, "window_size", 10**9),
        )


# Public config.json values of the released checkpoints (Qwen/Qwen2.5-VL-7B-Instruct, -72B-Instruct).
QWEN25_VL_7B = ModelSpec(
    "Qwen2.5-VL-7B", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064
)
QWEN25_VL_72B = ModelSpec(
    "Qwen2.5-VL-72B", layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=29568, vocab=152064
)


def visual_tokens(width: int, height: int, frames: int = 1, model: ModelSpec = QWEN25_VL_7B) -> int:
    """Merged visual tokens of one image (``frames=1``) or video: one per ``(patch*merge)^2``
    pixels after rounding each side to a multiple of ``patch*merge`` (28), frames grouped by
    the temporal patch (2)."""
    factor = model.patch * model.merge
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    groups = math.ceil(frames / model.temporal_patch) if frames > 1 else 1
    return groups * (h // factor) * (w // factor)


@dataclass(frozen=True)
class Workload:
    """One request: ``images`` images (or ``videos`` of ``frames`` frames) of ``width x height``."""

    images: int = 1
    width: int = 1260
    height: int = 1260
    videos: int = 0
    frames: int = 16
    text_tokens: int = 64
    output_tokens: int = 128
    batch: int = 1

    def visual(self, model: ModelSpec = QWEN25_VL_7B) -> int:
        per_image = visual_tokens(self.width, self.height, 1, model)
        per_video = visual_tokens(self.width, self.height, self.frames, model)
        return self.images * per_image + self.videos * per_video

    def tokens(self, model: ModelSpec = QWEN25_VL_7B) -> int:
        """Prompt length: visual tokens plus text tokens."""
        return self.visual(model) + self.text_tokens


def kv_cache_bytes(model: ModelSpec, tokens: int, batch: int = 1, bytes_per_value: float | None = None) -> float:
    """``2 * L * N * D * r_kv * P`` with ``D = hidden`` and ``r_kv = H_kv / H`` (per KV head)."""
    P = model.bytes_per_param if bytes_per_value is None else bytes_per_value
    return 2 * model.layers * tokens * model.hidden * model.r_kv * P * batch


@dataclass
class StageCost:
    stage: str
    flops: float
    bytes: float
    gpu: GPU = field(repr=False, default=A100)

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes

    @property
    def seconds(self) -> float:
        """Roofline time: the slower of compute and memory traffic."""
        return max(self.flops / self.gpu.flops, self.bytes / self.gpu.bandwidth)

    @property
    def bound(self) -> str:
        return "compute" if self.intensity >= self.gpu.ridge else "memory"


def _encode(model: ModelSpec, work: Workload) -> tuple[float, float]:
    d, f = model.vision_hidden, model.vision_intermediate
    visual = work.visual(model) * work.batch
    patches = visual * model.merge**2
    per_patch_item = patches / max(1, work.images + work.videos) / max(1, work.batch)  # patches per image/video
    window = min(per_patch_item, (model.window / model.patch) ** 2)
    linear = 2 * patches * (4 * d * d + 3 * d * f) * model.vision_depth
    full = model.vision_full_blocks
    attention = 4 * patches * d * (window * (model.vision_depth - full) + per_patch_item * full)
    embed = 2 * patches * 3 * model.temporal_patch * model.patch**2 * d
    merged = d * model.merge**2
    merger = 2 * visual * (merged * merged + merged * model.hidden)
    flops = linear + attention + embed + merger
    traffic = model.vision_params() * model.bytes_per_param
    return flops, traffic


def stage_costs(model: ModelSpec, work: Workload, gpu: GPU = A100) -> dict[str, Any]:
    """Encode, prefill and one decode step (at the mean context length) on ``gpu``.

    Returns:
        dict with ``encode``, ``prefill``, ``decode`` (:class:`StageCost`), ``ttft_s``,
        ``tpot_s``, ``tokens``, ``visual_tokens``, ``kv_bytes`` (after prefill), ``ridge``.
    """
    N = work.tokens(model)
    B = work.batch
    weights = model.llm_params() * model.bytes_per_param
    attention_dims = model.heads * model.head_dim
    flops, traffic = _encode(model, work)
    encode = StageCost("encode", flops, traffic, gpu)
    kv = kv_cache_bytes(model, N, B)
    prefill = StageCost(
        "prefill",
        2 * B * N * model.llm_params() + 2 * B * model.layers * N * N * attention_dims,  # causal: half of 4*N^2*D
        weights + kv,
        gpu,
    )
    context = N + work.output_tokens / 2
    kv_mean = kv_cache_bytes(model, context, B)
    decode = StageCost(
        "decode", 2 * B * model.llm_params() + 4 * B * model.layers * context * attention_dims, weights + kv_mean, gpu
    )
    return {
        "encode": encode,
        "prefill": prefill,
        "decode": decode,
        "ttft_s": encode.seconds + prefill.seconds,
        "tpot_s": decode.seconds,
        "tokens": N,
        "visual_tokens": work.visual(model),
        "kv_bytes": kv,
        "ridge": gpu.ridge,
    }
