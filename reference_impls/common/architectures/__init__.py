"""Architecture adapters: where each VLM family keeps its language layers, vision tower and visual tokens.

Methods never read a model attribute name: they ask :func:`adapter_for` (keyed by
``config.model_type``) for the text decoder layers, the vision tower, the visual-token mask, the
kind of positions (M-RoPE 3-D or 1-D), the DeepStack layers (Qwen3-VL) and the sliding-window
layers (Gemma 3). A feature a method needs and an architecture does not offer is refused with
:class:`UnsupportedFeature`, whose message names the feature (never a silent wrong answer).

One module per family: :mod:`.qwen`, :mod:`.llava`, :mod:`.internvl`, :mod:`.gemma3`,
:mod:`.idefics3`, :mod:`.paligemma`; :mod:`.mllama` refuses cross-attention models.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl
    >>> model = tiny_qwen25vl()
    >>> adapter = adapter_for(model)
    >>> adapter.name, adapter.positions, len(adapter.language_layers(model))
    ('qwen2.5-vl', 'mrope', 3)
"""

from __future__ import annotations

from reference_impls.common.architectures.base import (
    Adapter,
    UnsupportedArchitecture,
    UnsupportedFeature,
)

__all__ = ["ADAPTERS", "Adapter", "UnsupportedArchitecture", "UnsupportedFeature", "adapter_for", "register_adapter"]

ADAPTERS: dict[str, Adapter] = {}
"""``config.model_type`` -> adapter."""
_REFUSED: dict[str, str] = {}


def register_adapter(adapter: Adapter, *model_types: str) -> Adapter:
    """Make ``adapter`` the one :func:`adapter_for` returns for these ``model_type`` values."""
    for model_type in model_types:
        ADAPTERS[model_type] = adapter
    return adapter


def refuse_architecture(model_type: str, reason: str) -> None:
    """Register a model type whose adapter lookup raises :class:`UnsupportedArchitecture` with ``reason``."""
    _REFUSED[model_type] = reason


def adapter_for(model_or_config) -> Adapter:
    """The adapter of a model (or its config, or a ``model.model``), by ``config.model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type in _REFUSED:
        raise UnsupportedArchitecture(_REFUSED[model_type])
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"no architecture adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}"
        ) from None


from reference_impls.common.architectures import (  # noqa: E402, F401 (adapters register themselves on import)
    gemma3,
    idefics3,
    internvl,
    llava,
    mllama,
    paligemma,
    qwen,
)
