"""A small zoo of torch model definitions that tests and benchmarks export to ONNX.

``import models`` does not import torch; the family modules are imported on first use.

    from models import list_models, get_model
    spec = get_model("resnet_basic")
    net = spec.build()                      # an nn.Module in eval mode, deterministic
    x = spec.example_inputs()               # numpy float32 arrays, batch 1
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ModelSpec", "get_model", "list_models", "register_model"]

_REGISTRY: dict[str, ModelSpec] = {}
_FAMILIES = ("models.zoo",)
_loaded = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[[], object]
    input_shapes: tuple[tuple[int, ...], ...]
    tags: frozenset[str] = field(default_factory=frozenset)

    def build(self):
        """The torch module, eval mode, weights seeded by the model name."""
        import torch

        torch.manual_seed(sum(map(ord, self.name)))
        return self.builder().eval()

    def example_inputs(self, seed: int = 0) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(seed)
        return tuple(rng.standard_normal(s).astype(np.float32) for s in self.input_shapes)


def register_model(name: str, *input_shapes: tuple[int, ...], tags=()):
    """Register ``builder`` under ``name``; a duplicate name raises."""

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, builder, tuple(input_shapes), frozenset(tags))
        return builder

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _FAMILIES:
            importlib.import_module(mod)


def list_models(pattern: str = "*", tag: str | None = None) -> list[str]:
    _load()
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (tag is None or tag in s.tags)
    )


def get_model(name: str) -> ModelSpec:
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"no model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
