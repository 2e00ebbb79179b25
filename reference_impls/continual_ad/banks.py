"""LoRA banks on a frozen diffusers U-Net as named peft adapters, with hard orthogonality by reparametrisation.

A *bank* is one peft LoRA adapter (named, e.g. ``"task3"``) on a subset of the adapted layers,
with its own rank per layer. Several banks are active at once and their deltas add up.
:class:`LoRABanks` creates banks, activates a set of them, freezes everything but the bank in
training, and registers ``torch.nn.utils.parametrize`` projections so that a new bank's factors
are ``A = Ã P_in`` and ``B = P_out B̃``: orthogonality to the stored subspaces holds exactly
whatever the optimiser does. :func:`input_covariances` collects the per-layer input covariances
(conv inputs unfolded with the layer's own kernel geometry) that the subspaces come from.

Examples:
    >>> from reference_impls.continual_ad.diffusion import build_unet
    >>> from reference_impls.continual_ad.banks import LoRABanks
    >>> banks = LoRABanks(build_unet(16))
    >>> params = banks.add("task1", {name: 2 for name in banks.layers}, owner=1)

Paper: arXiv 2606.02042 (frozen U-Net and frozen banks are from the abstract; the peft and
parametrisation mechanics are ours, ``reference_impls/continual_ad/hfolb/README.md`` section 5).

Deviations / guesses: adapted layers are every resnet ``conv1``/``conv2``/``time_emb_proj`` and the
attention ``to_q``/``to_k``/``to_v``/``to_out.0`` (the paper does not say which layers it adapts).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.nn.utils import parametrize

from reference_impls.continual_ad.subspace import Moments

__all__ = ["LayerSpec", "adapted_layers", "LoRABanks", "input_covariances"]

_ADAPTED = re.compile(r"(resnets\.\d+\.(conv1|conv2|time_emb_proj)|attentions\.\d+\.(to_q|to_k|to_v|to_out\.0))$")


@dataclass
class LayerSpec:
    """An adapted layer: its module (the frozen base layer), ``d_in`` (C_in·k·k for convs), ``d_out`` and U-Net level."""

    name: str
    module: nn.Module
    d_in: int
    d_out: int
    level: str
    coarsest: bool


def adapted_layers(unet: nn.Module) -> dict[str, LayerSpec]:
    """The adapted layers of a ``UNet2DModel``, keyed by module name, with levels down_i / mid / up_i.

    ``up_i`` has the resolution of ``down_i`` (diffusers lists up blocks coarsest first).
    """
    n_up = len(unet.up_blocks)
    layers = {}
    for name, module in unet.named_modules():
        if not _ADAPTED.search(name) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        block, index = name.split(".")[0], name.split(".")[1]
        level = {"down_blocks": f"down_{index}", "mid_block": "mid"}.get(block) or f"up_{n_up - 1 - int(index)}"
        coarsest = level in ("mid", f"down_{n_up - 1}", f"up_{n_up - 1}")
        d_in = module.weight[0].numel()  # C_in·kh·kw or in_features
        layers[name] = LayerSpec(name, module, d_in, module.weight.shape[0], level, coarsest)
    return layers


class _ProjectRight(nn.Module):
    """weight (r, …) ↦ (W.view(r, d_in) @ P_in).view(…): rows of A stay in the complement of U."""

    def __init__(self, P: torch.Tensor):
        super().__init__()
        self.register_buffer("P", P)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return (W.reshape(W.shape[0], -1) @ self.P).reshape(W.shape)


class _ProjectLeft(nn.Module):
    """weight (d_out, r, …) ↦ P_out @ W: columns of B stay orthogonal to old B columns."""

    def __init__(self, P: torch.Tensor):
        super().__init__()
        self.register_buffer("P", P)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return (self.P @ W.reshape(W.shape[0], -1)).reshape(W.shape)


class LoRABanks:
    """Named LoRA banks on a frozen U-Net; ``self.model`` is the callable ε-predictor."""

    def __init__(self, unet: nn.Module):
        self.unet = unet.requires_grad_(False)
        self.layers = adapted_layers(unet)
        self.peft: PeftModel | None = None
        self.owner: dict[str, int] = {}
        self.ranks: dict[str, dict[str, int]] = {}
        self.active: list[str] = []
        self._trainable: list[nn.Parameter] = []  # the bank in training; stays trainable across activate()

    @property
    def model(self) -> nn.Module:
        return self.peft if self.peft is not None else self.unet

    def _lora(self, layer: str) -> nn.Module:
        return self.peft.base_model.model.get_submodule(layer)

    def add(
        self,
        name: str,
        ranks: dict[str, int],
        *,
        owner: int,
        init_A: dict[str, torch.Tensor] | None = None,
        P_in: dict[str, torch.Tensor] | None = None,
        P_out: dict[str, torch.Tensor] | None = None,
        train_A: bool = True,
    ) -> list[nn.Parameter]:
        """Create bank ``name`` with ``ranks[layer]`` (α = r), activate it with the existing banks and return its trainable parameters.

        Args:
            name: adapter name.
            ranks: rank per layer (layers absent from the dict get no factors).
            owner: task index owning the bank.
            init_A: optional ``(r, d_in)`` initial down-projection per layer (B starts at zero).
            P_in, P_out: optional projectors ``(d_in, d_in)`` / ``(d_out, d_out)`` registered as parametrisations.
            train_A: whether Ã trains (False gives InfLoRA behaviour).
        """
        config = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            target_modules=list(ranks),
            rank_pattern=dict(ranks),
            alpha_pattern=dict(ranks),
            init_lora_weights=True,
            lora_dropout=0.0,
        )
        if self.peft is None:
            self.peft = get_peft_model(self.unet, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        self.owner[name], self.ranks[name] = owner, dict(ranks)
        params = []
        for layer in ranks:
            lora = self._lora(layer)
            A, B = lora.lora_A[name], lora.lora_B[name]
            with torch.no_grad():
                if init_A is not None and layer in init_A:
                    A.weight.copy_(init_A[layer].reshape(A.weight.shape))
                B.weight.zero_()
            if P_in is not None and layer in P_in:
                parametrize.register_parametrization(A, "weight", _ProjectRight(P_in[layer].float()))
            if P_out is not None and layer in P_out:
                parametrize.register_parametrization(B, "weight", _ProjectLeft(P_out[layer].float()))
            params += (list(A.parameters()) if train_A else []) + list(B.parameters())
        self.activate(list(self.owner))
        self._trainable = params
        for p in params:
            p.requires_grad_(True)
        return params

    def activate(self, names: list[str]) -> None:
        """Activate exactly ``names`` (deltas add up); everything stays frozen except the bank in training."""
        self.active = list(names)
        if self.peft is None:
            return
        self.peft.base_model.set_adapter(list(names) if names else list(self.owner)[:1])
        if not names:  # peft needs one active adapter; disable the layers instead
            self.peft.base_model.disable_adapter_layers()
        else:
            self.peft.base_model.enable_adapter_layers()
        self.peft.requires_grad_(False)  # set_adapter marks every activated adapter trainable
        for p in self._trainable:
            p.requires_grad_(True)

    def freeze(self, name: str) -> None:
        """Bake the projections into bank ``name`` (plain state-dict keys again) and freeze it."""
        for layer in self.ranks[name]:
            lora = self._lora(layer)
            for factor in (lora.lora_A[name], lora.lora_B[name]):
                if parametrize.is_parametrized(factor, "weight"):
                    parametrize.remove_parametrizations(factor, "weight", leave_parametrized=True)
                factor.requires_grad_(False)
        self._trainable = []
        self.peft.requires_grad_(False)

    def factors(self, name: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, d_in), B (d_out, r)) of bank ``name`` at ``layer``, projections applied."""
        lora = self._lora(layer)
        A, B = lora.lora_A[name].weight, lora.lora_B[name].weight
        return A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)

    def n_params(self, name: str) -> int:
        """Parameters of bank ``name``: Σ r (d_in + d_out)."""
        return sum(r * (self.layers[l].d_in + self.layers[l].d_out) for l, r in self.ranks[name].items())

    @contextlib.contextmanager
    def base(self):
        """Run the frozen U-Net without any bank."""
        if self.peft is None:
            yield self.unet
            return
        with self.peft.disable_adapter():
            yield self.peft


def _layer_inputs(spec: LayerSpec, x: torch.Tensor, positions: int, g: torch.Generator) -> torch.Tensor:
    """The rows the layer multiplies: (n, d_in). Convs are unfolded at ``positions`` random positions per image."""
    module = spec.module
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # (B, d_in, L)
        if cols.shape[-1] > positions:
            index = torch.stack([torch.randperm(cols.shape[-1], generator=g)[:positions] for _ in range(cols.shape[0])])
            cols = torch.gather(cols, 2, index[:, None, :].expand(-1, cols.shape[1], -1))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def input_covariances(
    model: nn.Module,
    layers: dict[str, LayerSpec],
    images: torch.Tensor,
    schedule,
    *,
    t_max: int,
    n_tau: int = 4,
    positions: int = 256,
    seed: int = 0,
    batch: int = 32,
) -> dict[str, Moments]:
    """``C_l = Σ x xᵀ / n`` (float64, as :class:`Moments`) of every layer's input while ``model`` denoises noised ``images``.

    Args:
        model: the current ε-predictor (banks active as they should be).
        layers: the layers to watch (hooks go on their frozen base modules).
        images: clean images (N, 3, H, W).
        schedule: DDPM schedule.
        t_max: timesteps are drawn from {1..t_max} (the inference range by default).
        n_tau: timesteps per image.
        positions: unfold positions per image for convs.
        seed: seeds timesteps, noise and positions.
    """
    g = torch.Generator().manual_seed(seed)
    rows_seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}  # kept while n <= d_in
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def fn(module, args):
            rows = _layer_inputs(layers[name], args[0], positions, g).double()
            counts[name] += rows.shape[0]
            if name in sums:
                sums[name] += rows.T @ rows
            elif counts[name] > layers[name].d_in:  # more samples than dimensions: switch to the covariance
                stacked = torch.cat(rows_seen.pop(name) + [rows])
                sums[name] = stacked.T @ stacked
            else:
                rows_seen[name].append(rows)

        return fn

    handles = [spec.module.register_forward_pre_hook(hook(name)) for name, spec in layers.items()]
    try:
        x = images.repeat_interleave(n_tau, 0)  # (N·n_tau, 3, H, W)
        tau = torch.randint(1, t_max + 1, (x.shape[0],), generator=g)
        noise = torch.randn(x.shape, generator=g)
        x_t = schedule.add_noise(x, noise, tau)
        for start in range(0, x.shape[0], batch):
            model(x_t[start : start + batch], tau[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name in layers:
        n = max(counts[name], 1)
        out[name] = Moments(cov=sums[name] / n) if name in sums else Moments(rows=torch.cat(rows_seen[name]) / n**0.5)
    return out
