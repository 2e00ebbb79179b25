"""The method registry: every reference implementation registers itself here.

Tests, benchmarks and the site iterate over :func:`all_methods` instead of keeping their own
lists, so a new method module is picked up everywhere once it is decorated with
:func:`register`.

Kinds (what the registered object is and how it is used):

- ``"visual-token"``: a dataclass with a ``budget`` field (fraction of visual tokens kept,
  0 < budget <= 1); ``with method(model): model.generate(...)`` runs the model with it.
- ``"kv-cache"``: a dataclass with a ``budget`` field (fraction of KV entries kept per KV head);
  used the same way as ``"visual-token"``.
- ``"decoding"``: a decoding strategy (speculative decoding, early answering), a callable.
- ``"unlearning"``, ``"hallucination"``, ``"continual-ad"``: topic-specific objects; each
  topic's package documents its interface.
- ``"analysis"``: functions that measure rather than change a model (cost models).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["MethodSpec", "register", "all_methods", "get_method", "KINDS"]

KINDS = (
    "visual-token",
    "kv-cache",
    "decoding",
    "unlearning",
    "hallucination",
    "continual-ad",
    "analysis",
)
_METHOD_PACKAGES = ("encoding", "prefilling", "decoding", "hallucination", "continual_ad")
# Methods that live outside the stage packages (the random-pruning baseline is shared by all stages).
_METHOD_MODULES = ("reference_impls.common.random_pruning",)


@dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str
    """Short, unique, lower-case name, e.g. ``"fastv"``."""
    family: str
    """Taxonomy id of the family the method belongs to (see ``taxonomy/``)."""
    kind: str
    """One of :data:`KINDS`."""
    target: Any
    """The registered class or function."""

    @property
    def module(self) -> str:
        return self.target.__module__


_REGISTRY: dict[str, MethodSpec] = {}
T = TypeVar("T")


def register(name: str, *, family: str, kind: str) -> Callable[[T], T]:
    """Class or function decorator that adds a method to the registry."""
    if kind not in KINDS:
        raise ValueError(f"unknown method kind {kind!r}; expected one of {KINDS}")

    def decorator(target: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.target is not target:
            raise ValueError(f"method name {name!r} is registered twice: {existing.module} and {target.__module__}")
        _REGISTRY[name] = MethodSpec(name=name, family=family, kind=kind, target=target)
        return target

    return decorator


def _import_all_methods() -> None:
    for module_name in _METHOD_MODULES:
        importlib.import_module(module_name)
    for package_name in _METHOD_PACKAGES:
        try:
            package = importlib.import_module(f"reference_impls.{package_name}")
        except ModuleNotFoundError as error:
            if error.name == f"reference_impls.{package_name}":
                continue
            raise
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(info.name)


def all_methods(kind: str | None = None) -> list[MethodSpec]:
    """Every registered method (importing all method modules first), sorted by name."""
    _import_all_methods()
    specs = sorted(_REGISTRY.values(), key=lambda spec: spec.name)
    return [spec for spec in specs if kind is None or spec.kind == kind]


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``."""
    _import_all_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no method named {name!r}; registered: {sorted(_REGISTRY)}") from None
