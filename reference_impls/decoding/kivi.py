"""KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache.

Keys and values have different outlier structure: a few key *channels* carry large magnitudes,
while value errors matter per *token*. KIVI therefore quantises keys per channel (over a group
of tokens) and values per token (over channels), asymmetrically (min/max scale and zero point)
to 2 or 4 bits, and keeps the most recent tokens in full precision until a whole key group can
be quantised. Nothing is evicted; memory shrinks by the bit width.

Paper: arXiv 2402.02750

Example::

    from reference_impls.decoding.kivi import KIVI
    method = KIVI(budget=0.125)  # 2 bits of a 16-bit cache
    with method(model):
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    method.cache.resident_bytes()  # packed codes + scales + zero points + residual

Deviations / guesses: pure torch, codes packed into uint8 along the channel axis; the residual
holds between ``residual_length`` and ``residual_length + group_size - 1`` tokens (whole groups
of the oldest tokens are quantised whenever it would exceed that); the prefill attention uses full
precision, quantisation happens right after it; attention dequantises the whole cache each step
(the dequantised copy is reported as transient bytes). ``budget`` picks the bit width as a
fraction of 16-bit storage: 1.0 = no quantisation, >= 0.25 -> 4 bits, lower -> 2 bits;
``bits`` overrides it. Scales and zero points are stored in the model dtype.
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
    """Quantised groups (keys per channel, values per token) plus a full-precision residual in ``keys``/``values``."""

    is_croppable = False  # quantised groups cannot be un-quantised

    def __init__(self, layer_idx: int, method: "KIVI"):
        super().__init__(layer_idx, method)
        self.bits = method.resolved_bits()
        # Quantised part, concatenated over groups: key codes (1, H, Sq, D*bits/8), key scale and
        # zero (1, H, Sq/G, D), value codes (1, H, Sq, D*bits/8), value scale and zero (1, H, Sq, D/Gv).
        self.quantized: list[torch.Tensor] | None = None

    @property
    def n_quantized(self) -> int:
        return 0 if self.quantized is None else self.quantized[0].shape[-2]

    def _append(self, k, v, pos):
        self.keys = torch.cat([self.keys, k], dim=-2) if self.keys.numel() else k
        self.values = torch.cat([self.values, v], dim=-2) if self.values.numel() else v
        if self.quantized is None:
            return self.keys, self.values
        deq_k, deq_v = self.dequantized()
        keys, values = torch.cat([deq_k, self.keys], dim=-2), torch.cat([deq_v, self.values], dim=-2)
        self.cache.transient_bytes = max(self.cache.transient_bytes, 2 * keys.element_size() * keys.nelement())
        return keys, values

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantised part of the cache in the model dtype, ``(1, H, Sq, D)`` each."""
        kc, ks, kz, vc, vs, vz = self.quantized
        g, d = self.method.group_size, self.keys.shape[-1]
        shape = (*kc.shape[:2], -1, g, d)
        keys = unpack_codes(kc, self.bits).to(ks.dtype).reshape(shape) * ks[..., None, :] + kz[..., None, :]
        values = unpack_codes(vc, self.bits).to(vs.dtype).reshape(*vc.shape[:3], d // self.vgroup, self.vgroup)
        values = values * vs[..., None] + vz[..., None]
        return keys.reshape(*kc.shape[:2], -1, d), values.reshape(*vc.shape[:3], d)

    def _flush(self):
        if self.bits is None:
            return
        g, r = self.method.group_size, self.method.residual_length
        d = self.keys.shape[-1]
        self.vgroup = min(self.method.value_channel_group or d, d)
        n_groups = max(0, (self.keys.shape[-2] - r) // g)
        if n_groups == 0:
            return
        m = n_groups * g
        k, v = self.keys[:, :, :m], self.values[:, :, :m]  # (1, H, m, D)
        kc, kscale, kzero = quantize(k.reshape(*k.shape[:2], n_groups, g, d), self.bits, dim=3)  # per channel over G tokens
        vc, vscale, vzero = quantize(v.reshape(*v.shape[:3], d // self.vgroup, self.vgroup), self.bits, dim=-1)  # per token
        new = [kc.reshape(*k.shape[:2], m, -1), kscale[..., 0, :], kzero[..., 0, :], vc.reshape(*v.shape[:3], -1), vscale[..., 0], vzero[..., 0]]
        self.quantized = new if self.quantized is None else [torch.cat([a, b], dim=2) for a, b in zip(self.quantized, new)]
        self.keys, self.values = self.keys[:, :, m:].contiguous(), self.values[:, :, m:].contiguous()

    def after_prefill(self, module, query, scaling):
        self._flush()

    def after_decode(self, module, query, scaling):
        self._flush()

    def physical_length(self):
        return super().physical_length() + self.n_quantized

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("KIVI cannot roll back: the oldest tokens are already quantised")

    def resident_tensors(self):
        yield from (self.keys, self.values)
        yield from self.quantized or ()


@register("kivi", family="kv-bit-level", kind="kv-cache")
@dataclass
class KIVI(KVCacheMethod):
    """KIVI configuration.

    Args:
        budget: target bytes as a fraction of a 16-bit cache; picks ``bits`` (see module notes).
        bits: 2 or 4 to override the budget (None: derive it).
        group_size: tokens per key quantisation group.
        residual_length: most recent tokens kept in full precision (at least).
        value_channel_group: channels per value quantisation group (None: the whole head).
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
