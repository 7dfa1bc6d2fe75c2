"""A small zoo of torch model definitions that tests and benchmarks export to ONNX.

``import models`` does not import torch; the family modules (which do) are imported on the
first call of `list_models` or `get_model`.

    from models import list_models, get_model
    spec = get_model("resnet_basic")
    net = spec.builder()                    # an nn.Module in eval mode, same weights every call
    x = spec.example_inputs()               # tuple of numpy float32 arrays, batch 1

Export with `models.export.export_onnx` / `models.export.cached_export`.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["ModelSpec", "get_model", "list_models", "register_model"]

_REGISTRY: dict[str, ModelSpec] = {}
_FAMILIES = ("models.zoo",)
_loaded = False


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. ``builder()`` returns a fresh ``nn.Module`` in eval mode whose weights
    depend only on ``name`` (torch is seeded inside, the caller's RNG state is left alone)."""

    name: str
    tags: frozenset[str]
    builder: Callable[[], object]
    input_shapes: tuple[tuple[int, ...], ...]

    def build(self):
        """Same as ``builder()``."""
        return self.builder()

    def example_inputs(self, seed: int = 0) -> tuple[np.ndarray, ...]:
        """Standard-normal float32 arrays, one per input, batch 1."""
        rng = np.random.default_rng(seed)
        return tuple(rng.standard_normal(s).astype(np.float32) for s in self.input_shapes)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ONNX input names `models.export` gives: ``input``, or ``input_0``, ``input_1``.."""
        n = len(self.input_shapes)
        return ("input",) if n == 1 else tuple(f"input_{i}" for i in range(n))


def _seed_of(name: str) -> int:
    return sum(map(ord, name))


def _perturb_default_bn(net, seed: int) -> None:
    """Give every BatchNorm that still has its initial statistics (mean 0, var 1) and affine
    parameters (1, 0) seeded random ones, so BN is never the identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        if not (torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)):
            continue
        with torch.no_grad():
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)


def _seeded(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    @functools.wraps(fn)
    def build():
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_of(name))
            net = fn()
        _perturb_default_bn(net, _seed_of(name) + 1)
        return net.eval()

    return build


def register_model(name: str, *input_shapes: tuple[int, ...], tags: Iterable[str] = ()):
    """Decorator: register ``builder`` (no arguments, returns an ``nn.Module``) under ``name``
    with one input per shape in ``input_shapes`` (batch 1). A duplicate name raises
    ``ValueError``. The registered ``ModelSpec.builder`` wraps it: seeded, eval mode, BN
    perturbed. Returns the undecorated builder."""
    if not input_shapes:
        raise ValueError(f"model {name!r}: give at least one input shape")

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(
            name=name,
            tags=frozenset(tags),
            builder=_seeded(name, builder),
            input_shapes=tuple(tuple(int(d) for d in s) for s in input_shapes),
        )
        return builder

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    before = dict(_REGISTRY)
    try:
        for mod in _FAMILIES:
            importlib.import_module(mod)
    except BaseException:
        # a failed import (e.g. no torch) leaves nothing half-registered; the next call retries
        _REGISTRY.clear()
        _REGISTRY.update(before)
        raise
    _loaded = True


def list_models(pattern: str = "*", tag: str | None = None) -> list[str]:
    """Sorted names matching the fnmatch ``pattern`` (and carrying ``tag``, if given)."""
    _load()
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (tag is None or tag in s.tags)
    )


def get_model(name: str) -> ModelSpec:
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"no model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
