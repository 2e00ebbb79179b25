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
holds between ``residual_length`` and ``residual_length + group_size - 1`` tokens (the oldest
``group_size`` are quantised whenever it would exceed that); the prefill attention uses full
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

    def __init__(self, layer_idx: int, method: "KIVI"):
        super().__init__(layer_idx)
        self.method = method
        self.bits = method.resolved_bits()
        self.groups: list[tuple[torch.Tensor, ...]] = []  # per quantised group: kc, ks, kz, vc, vs, vz

    def _append(self, k, v, pos):
        self.keys = torch.cat([self.keys, k], dim=-2) if self.keys.numel() else k
        self.values = torch.cat([self.values, v], dim=-2) if self.values.numel() else v
        if not self.groups:
            return self.keys, self.values
        deq_k, deq_v = self.dequantized()
        keys, values = torch.cat([deq_k, self.keys], dim=-2), torch.cat([deq_v, self.values], dim=-2)
        self.cache.transient_bytes = max(self.cache.transient_bytes, 2 * keys.element_size() * keys.nelement())
        return keys, values

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantised part of the cache in the model dtype, ``(1, H, n_groups * G, D)`` each."""
        b, d = self.bits, self.keys.shape[-1]
        ks, vs = [], []
        for kc, kscale, kzero, vc, vscale, vzero in self.groups:
            ks.append(dequantize(kc, kscale, kzero, b))
            v = dequantize(vc.reshape(*vc.shape[:3], d // self.vgroup, -1), vscale, vzero, b)
            vs.append(v.reshape(*v.shape[:3], d))
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)

    def _flush(self):
        if self.bits is None:
            return
        g, r = self.method.group_size, self.method.residual_length
        d = self.keys.shape[-1]
        self.vgroup = min(self.method.value_channel_group or d, d)
        while self.keys.shape[-2] >= r + g:
            k, v = self.keys[:, :, :g], self.values[:, :, :g]  # (1, H, G, D)
            kc, kscale, kzero = quantize(k, self.bits, dim=2)  # per channel over G tokens
            v = v.reshape(*v.shape[:3], d // self.vgroup, self.vgroup)
            vc, vscale, vzero = quantize(v, self.bits, dim=-1)  # per token over channel groups
            self.groups.append((kc, kscale, kzero, vc.reshape(*vc.shape[:3], -1), vscale, vzero))
            self.keys, self.values = self.keys[:, :, g:].contiguous(), self.values[:, :, g:].contiguous()

    def after_prefill(self, module, query, scaling):
        self._flush()

    def after_decode(self, module, query, scaling):
        self._flush()

    def physical_length(self):
        return super().physical_length() + len(self.groups) * self.method.group_size

    def resident_tensors(self):
        yield from (self.keys, self.values)
        for group in self.groups:
            yield from group


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

    def make_layer(self, layer_idx, config):
        return _KIVILayer(layer_idx, self)
