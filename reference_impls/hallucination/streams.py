"""A second decoding stream inside ``with method(model)``: its own KV cache beside the model's.

Decode-time contrasts (VCD's distorted image, PAI's text-only prompt) run the model a second time
at every step and combine the two outputs' logits. The methods replace ``model.forward`` (an
instance attribute, so ``model.generate`` and plain forwards both go through it) and keep the
second stream's cache next to the one ``generate`` passes in. These helpers are the parts they
share: finding the main stream's cache, opening one of the same type, and patching attributes
for the duration of the context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["CACHE_KEYS", "cache_key", "cache_length", "new_cache", "patched"]

CACHE_KEYS = ("cache", "past_key_values")
"""The keyword a forward call passes its KV cache under (transformers 5 renamed it)."""


def cache_key(kwargs: dict) -> str | None:
    """The keyword under which this forward call carries a cache, or None without one."""
    return next((k for k in CACHE_KEYS if kwargs.get(k) is not None), None)


def cache_length(kwargs: dict) -> int:
    """Tokens already in the call's cache (0 without a cache: the call is a whole prefill)."""
    key = cache_key(kwargs)
    return 0 if key is None else kwargs[key].get_seq_length()


def new_cache(kwargs: dict, config) -> Any:
    """An empty cache of the same type as the call's, or None when the call has none."""
    key = cache_key(kwargs)
    return None if key is None else type(kwargs[key])(config=config)


@contextlib.contextmanager
def patched(*targets: tuple[object, str, object]) -> Iterator[None]:
    """Set ``obj.name = value`` for each ``(obj, name, value)``; restore (or delete) them on exit."""
    saved = [(obj, name, obj.__dict__.get(name)) for obj, name, _ in targets]
    for obj, name, value in targets:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            if value is None:
                del obj.__dict__[name]
            else:
                setattr(obj, name, value)
