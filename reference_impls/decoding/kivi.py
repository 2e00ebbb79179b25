"""KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache.

Keys and values have different outlier structure: a few key *channels* carry large magnitudes,
while value errors matter per *token*. KIVI therefore quantises keys per channel (over a group
of tokens) and values per token (over channels), asymmetrically (min/max scale and zero point)
to 2 or 4 bits, and keeps the most recent tokens in full precision until a whole key group can
be quantised. Nothing is evicted; memory shrinks by the bit width.

Paper: arXiv 2402.02750

Upstream: jy-yuan/KIVI models/llama_kivi.py @ 04eeae0657316ae2adafa97101408e433b588d52
(``LlamaAttention_KIVI.forward``: when to quantise) and quant/new_pack.py
@ 150def81efb680e793f1ad6bc49760ae9619e511 (``quant_and_pack_kcache`` / ``quant_and_pack_vcache``:
how).

Example::

    from reference_impls.decoding.kivi import KIVI
    method = KIVI(budget=0.125)  # 2 bits of a 16-bit cache
    with method(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    method.cache.resident_bytes()  # packed codes + scales + zero points + residual

The default follows the reference code. Keys: per channel over groups of ``group_size`` tokens;
the prefill quantises the largest multiple of ``residual_length`` (R) tokens and keeps the rest
(``n mod R``) in full precision; during decoding the key residual grows to R and is then
quantised at once, so it holds 0 to R - 1 tokens between steps. Values: per token over groups
of ``group_size`` channels; everything but the last R tokens is quantised (the prefill
quantises ``n - R`` tokens, each decode step the oldest residual token), so exactly R values
stay in full precision. Asymmetric min/max quantisation, ``round(clamp((x - min) / scale))``.

Deviations: pure torch, codes packed into uint8 along the channel axis (upstream packs int32
with triton kernels; same codes); the prefill attention uses full precision, quantisation
happens right after it (as upstream); attention dequantises the whole cache each step (the
dequantised copy is reported as transient bytes; upstream fuses it into the matmul). When
``group_size`` exceeds the head dim the value group is the whole head (upstream would refuse);
``value_channel_group`` overrides the value grouping. ``budget`` picks the bit width as a
fraction of 16-bit storage: 1.0 = no quantisation, >= 0.25 -> 4 bits, lower -> 2 bits; ``bits``
overrides it (upstream sets ``k_bits``/``v_bits`` directly). Scales and zero points are stored
in the model dtype; a zero range is clamped to ``1e-8`` (upstream divides by zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impls.decoding.cache import CompressedLayer, KVCacheMethod
from reference_impls.registry import register

__all__ = ["KIVI", "quantize", "dequantize", "pack_codes", "unpack_codes"]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` along the last axis into uint8 (``8 // bits`` per byte)."""
    per = 8 // bits
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    shifts = torch.arange(per, dtype=torch.uint8, device=codes.device) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits
    codes = (packed[..., None] >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def quantize(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantisation of ``x`` with statistics taken over ``dim``.

    Returns:
        ``(packed codes, scale, zero)``; ``scale`` and ``zero`` keep ``dim`` with size 1.
    """
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
    codes = ((x - lo) / scale).round().clamp(0, 2**bits - 1)
    return pack_codes(codes, bits), scale.to(x.dtype), lo.to(x.dtype)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_codes(packed, bits).to(scale.dtype) * scale + zero


class _KIVILayer(CompressedLayer):
    """Quantised keys (per channel) and values (per token) plus full-precision residuals in ``keys``/``values``.

    Keys and values are flushed separately, as in the reference code: the key residual holds
    ``0 .. R-1`` tokens and is quantised ``R`` tokens at a time (in groups of ``G`` tokens); the
    value residual holds the last ``R`` tokens and the older ones are quantised one by one.
    """

    is_croppable = False  # quantised groups cannot be un-quantised

    def __init__(self, layer_idx: int, method: KIVI):
        super().__init__(layer_idx, method)
        self.bits = method.resolved_bits()
        if method.residual_length % method.group_size:
            raise ValueError(
                f"residual_length {method.residual_length} must be a multiple of group_size {method.group_size}"
            )
        # Quantised keys, concatenated over flushes: codes (1, H, Sk, D*bits/8), scale and zero (1, H, Sk/G, D).
        self.quantized_keys: list[torch.Tensor] | None = None
        # Quantised values: codes (1, H, Sv, D*bits/8), scale and zero (1, H, Sv, D/Gv).
        self.quantized_values: list[torch.Tensor] | None = None

    @property
    def n_quantized_keys(self) -> int:
        return 0 if self.quantized_keys is None else self.quantized_keys[0].shape[-2]

    @property
    def n_quantized_values(self) -> int:
        return 0 if self.quantized_values is None else self.quantized_values[0].shape[-2]

    def _append(self, k, v, pos):
        self.keys = torch.cat([self.keys, k], dim=-2) if self.keys.numel() else k
        self.values = torch.cat([self.values, v], dim=-2) if self.values.numel() else v
        if self.quantized_keys is None and self.quantized_values is None:
            return self.keys, self.values
        deq_k, deq_v = self.dequantized()
        keys, values = torch.cat([deq_k, self.keys], dim=-2), torch.cat([deq_v, self.values], dim=-2)
        self.cache.transient_bytes = max(self.cache.transient_bytes, 2 * keys.element_size() * keys.nelement())
        return keys, values

    def value_group(self, d: int) -> int:
        """Channels per value quantisation group (``value_channel_group``, else ``group_size``, at most ``d``)."""
        group = min(self.method.value_channel_group or self.method.group_size, d)
        if d % group:
            raise ValueError(f"head dim {d} is not a multiple of the value channel group {group}")
        return group

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantised parts of the cache in the model dtype: keys ``(1, H, Sk, D)``, values ``(1, H, Sv, D)``."""
        d = self.keys.shape[-1]
        h = self.keys.shape[1]
        keys = self.keys.new_zeros(1, h, 0, d)
        values = self.values.new_zeros(1, h, 0, d)
        if self.quantized_keys is not None:
            kc, ks, kz = self.quantized_keys
            g = self.method.group_size
            keys = unpack_codes(kc, self.bits).to(ks.dtype).reshape(*kc.shape[:2], -1, g, d)  # (1, H, Sk/G, G, D)
            keys = (keys * ks[..., None, :] + kz[..., None, :]).reshape(*kc.shape[:2], -1, d)
        if self.quantized_values is not None:
            vc, vs, vz = self.quantized_values
            gv = self.value_group(d)
            values = unpack_codes(vc, self.bits).to(vs.dtype).reshape(*vc.shape[:3], d // gv, gv)
            values = (values * vs[..., None] + vz[..., None]).reshape(*vc.shape[:3], d)
        return keys, values

    def _flush(self):
        if self.bits is None:
            return
        g, r = self.method.group_size, self.method.residual_length
        d = self.keys.shape[-1]
        m = (self.keys.shape[-2] // r) * r  # keys: whole residuals of R tokens
        if m:
            k = self.keys[:, :, :m]  # (1, H, m, D)
            # per channel over G tokens
            kc, kscale, kzero = quantize(k.reshape(*k.shape[:2], m // g, g, d), self.bits, dim=3)
            new = [kc.reshape(*k.shape[:2], m, -1), kscale[..., 0, :], kzero[..., 0, :]]
            old = self.quantized_keys
            self.quantized_keys = new if old is None else [torch.cat(p, dim=2) for p in zip(old, new)]
            self.keys = self.keys[:, :, m:].contiguous()
        mv = max(0, self.values.shape[-2] - r)  # values: everything older than the last R tokens
        if mv:
            gv = self.value_group(d)
            v = self.values[:, :, :mv]
            # per token over Gv channels
            vc, vscale, vzero = quantize(v.reshape(*v.shape[:3], d // gv, gv), self.bits, dim=-1)
            new = [vc.reshape(*v.shape[:3], -1), vscale[..., 0], vzero[..., 0]]
            old = self.quantized_values
            self.quantized_values = new if old is None else [torch.cat(p, dim=2) for p in zip(old, new)]
            self.values = self.values[:, :, mv:].contiguous()

    def after_prefill(self, module, query, scaling):
        self._flush()

    def after_decode(self, module, query, scaling):
        self._flush()

    def physical_length(self):
        return super().physical_length() + self.n_quantized_keys

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("KIVI cannot roll back: the oldest tokens are already quantised")

    def resident_tensors(self):
        yield from (self.keys, self.values)
        yield from self.quantized_keys or ()
        yield from self.quantized_values or ()


@register("kivi", family="kv-bit-level", kind="kv-cache")
@dataclass
class KIVI(KVCacheMethod):
    """KIVI configuration.

    Args:
        budget: target bytes as a fraction of a 16-bit cache; picks ``bits`` (see module notes).
        bits: 2 or 4 to override the budget (None: derive it).
        group_size: tokens per key quantisation group, and channels per value group.
        residual_length: full-precision tokens (keys: up to ``R - 1``; values: the last ``R``); a
            multiple of ``group_size``.
        value_channel_group: channels per value quantisation group (None: ``group_size``, as
            upstream; set it to the head dim to quantise each value row as one group).
    """

    budget: float | int = 0.125
    bits: int | None = None
    group_size: int = 32
    residual_length: int = 32
    value_channel_group: int | None = None

    def resolved_bits(self) -> int | None:
        if self.bits is not None:
            if self.bits not in (2, 4):
                raise ValueError(f"KIVI supports 2 or 4 bits, got {self.bits}")
            return self.bits
        if isinstance(self.budget, bool) or not isinstance(self.budget, float) or not 0 < self.budget <= 1:
            raise ValueError(f"KIVI's budget is a float byte fraction in (0, 1], got {self.budget!r}")
        if self.budget >= 1.0:
            return None
        return 4 if self.budget >= 0.25 else 2

    layer_class = _KIVILayer
