"""The per-op registry of the ONNX -> torch interpreter (torch-free).

An op is one builder function registered for ``(domain, op_type)`` and an opset range. At
`spa_nm.train.to_torch` time the builder reads the node's attributes and constant inputs
(through `NodeSpec`) and returns a *kernel*, a closure ``kernel(rt, *inputs) -> Tensor | tuple``
that runs at every forward pass (``rt`` is the module: kernels read ``rt.training``). Attribute
parsing and every "not supported" decision therefore happen once, when the module is built,
never in the middle of a training run.

Each registration also says what its inputs *are*, which decides what becomes trainable:

* ``weights``: slots that hold learned tensors (Conv W and B, Gemm A/B/C, norm scale and bias,
  PRelu slope, Gather data). A float constant read here is an ``nn.Parameter``.
* ``config``: slots read as Python values (shapes, axes, pads, scales, Pow exponents, Clip
  bounds, ...). A constant read here is never a parameter, and it stays on the CPU so reading it
  needs no device synchronisation.
* ``fixed``: device data that is never trained (BatchNormalization running mean and var, Pow
  exponents): registered buffers.
* every other slot is data: a float constant with more than one element (and only finite
  values) read there is a parameter too (layer-scale vectors, cls tokens, position
  embeddings); a scalar is a hyper-constant (an epsilon, a divisor) and stays a buffer.

A duplicate or overlapping registration raises, as in `spa_nm.rules._registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import UnsupportedModelError

__all__ = [
    "NodeSpec",
    "OpEntry",
    "UnsupportedOpError",
    "lookup",
    "op",
    "supported_ops",
]

_MAX_OPSET = 10_000

Kernel = Callable[..., Any]
Builder = Callable[["NodeSpec"], Kernel]


class UnsupportedOpError(UnsupportedModelError):
    """A node the torch interpreter cannot run; raised by `to_torch`, never mid-forward."""


@dataclass(frozen=True, slots=True)
class OpEntry:
    """One registration: the builder and the roles of its input slots."""

    domain: str
    op_type: str
    lo: int
    hi: int
    build: Builder
    weights: frozenset[int]
    config: frozenset[int]
    fixed: frozenset[int]
    scoped: bool = False  # the kernel also receives the enclosing value scope (control flow)

    def role(self, index: int) -> str:
        """``"weight"``, ``"config"``, ``"fixed"`` or ``"data"`` for input slot ``index``."""
        if index in self.config:
            return "config"
        if index in self.fixed:
            return "fixed"
        if index in self.weights:
            return "weight"
        return "data"


_OPS: dict[tuple[str, str], list[OpEntry]] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def op(
    *op_types: str,
    domain: str = "",
    opsets: tuple[int, int | None] = (1, None),
    weights: tuple[int, ...] = (),
    config: tuple[int, ...] = (),
    fixed: tuple[int, ...] = (),
    scoped: bool = False,
) -> Callable[[Builder], Builder]:
    """Register a builder for ``op_types`` at opsets ``lo <= v <= hi`` (``None``: open).

    ``scoped`` kernels are called as ``kernel(rt, env, *inputs)``: ``env`` maps the names
    visible at the node to tensors, for subgraphs that read outer values (If).
    """
    lo, hi = opsets[0], _MAX_OPSET if opsets[1] is None else opsets[1]
    if lo > hi:
        raise ValueError(f"empty opset range {opsets} for {op_types}")

    def register(fn: Builder) -> Builder:
        for op_type in op_types:
            key = (_norm_domain(domain), op_type)
            for other in _OPS.get(key, []):
                if not (hi < other.lo or lo > other.hi):
                    raise ValueError(
                        f"torch op {domain or 'ai.onnx'}::{op_type} opsets {lo}-{hi} overlaps "
                        f"{other.build.__module__}.{other.build.__name__} ({other.lo}-{other.hi})"
                    )
            entry = OpEntry(
                key[0],
                op_type,
                lo,
                hi,
                fn,
                frozenset(weights),
                frozenset(config),
                frozenset(fixed),
                scoped,
            )
            _OPS.setdefault(key, []).append(entry)
        return fn

    return register


def lookup(domain: str, op_type: str, opset: int) -> OpEntry | None:
    """The one builder for this op at this opset, or None."""
    for entry in _OPS.get((_norm_domain(domain), op_type), []):
        if entry.lo <= opset <= entry.hi:
            return entry
    return None


def supported_ops() -> list[tuple[str, str, int, int | None]]:
    """``(domain, op_type, lo, hi)`` of every registration (``hi`` None when open)."""
    return sorted(
        (e.domain, e.op_type, e.lo, None if e.hi == _MAX_OPSET else e.hi)
        for entries in _OPS.values()
        for e in entries
    )


class NodeSpec:
    """What a builder may read about its node: attributes (with defaults), the opset, which
    optional inputs and outputs are present, and the values of constant inputs."""

    def __init__(
        self,
        node: ir.Node,
        opset: int,
        where: str,
        consts: dict[str, np.ndarray],
        subgraphs: Callable[[ir.Graph], Kernel] | None = None,
    ) -> None:
        self.node = node
        self.opset = opset
        self.where = where
        self._consts = consts
        self._subgraphs = subgraphs

    @property
    def name(self) -> str:
        return self.node.name or f"<{self.node.op_type}>"

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def n_inputs(self) -> int:
        """Number of input slots (trailing omitted ones excluded)."""
        return len(self.node.inputs)

    def has_input(self, i: int) -> bool:
        """Input ``i`` is given (not omitted, not an empty name)."""
        return i < len(self.node.inputs) and self.node.inputs[i] is not None

    def has_output(self, i: int) -> bool:
        """Output ``i`` is requested (present with a non-empty name)."""
        return i < len(self.node.outputs) and bool(self.node.outputs[i].name)

    @property
    def n_outputs(self) -> int:
        return len(self.node.outputs)

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's Python value (ints, floats, strings, tuples, ir tensors), or
        ``default``."""
        a = self.node.attributes.get(name)
        if a is None:
            return default
        v = a.value
        if isinstance(v, tuple | list):
            return tuple(v)
        return v

    def const(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is a constant known at build time, else None."""
        if not self.has_input(i):
            return None
        return self._consts.get(self.node.inputs[i].name)

    def subgraph(self, name: str) -> Kernel:
        """The graph attribute ``name`` built as ``run(rt, env) -> tuple`` of its outputs
        (``env``: the enclosing scope, which the subgraph may read)."""
        g = self.attr(name)
        if not isinstance(g, ir.Graph) or self._subgraphs is None:
            raise self.unsupported(f"no graph attribute {name!r}")
        return self._subgraphs(g)

    @property
    def label(self) -> str:
        """``domain::op_type (opset N)``."""
        return f"{self.node.domain or 'ai.onnx'}::{self.op_type} (opset {self.opset})"

    def unsupported(self, why: str = "") -> UnsupportedOpError:
        """The error to raise for this node (``why``: what exactly is not implemented)."""
        msg = f"{self.where}: no torch implementation for {self.label} at node {self.name}"
        return UnsupportedOpError(f"{msg} ({why})" if why else msg)
