"""RuleContext: the read-only view of the model that a rule may use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from spa_nm.facts import Slot

if TYPE_CHECKING:
    import onnx_ir as ir

    from spa_nm.graph import ModelView

__all__ = ["MAX_SLOT_ELEMENTS", "RuleContext"]

# A channel space larger than this is frozen instead of analysed element by element (a
# declared dimension of 2**31 would otherwise exhaust memory).
MAX_SLOT_ELEMENTS = 1 << 24


class UnknownRank(ValueError):
    """A rule needed the rank of a value that shape inference left unknown: the op blocks."""


class RuleContext:
    """Shapes, constants, attributes and the channel slots known so far, for one node."""

    def __init__(
        self,
        view: ModelView,
        node: ir.Node,
        known: dict[str, set[Slot]],
        reads: set[str] | None = None,
    ) -> None:
        self.view = view
        self.node = node
        self._known = known
        # the values whose slots this rule looked at: the analysis re-runs the rule when
        # one of them gains a slot (a worklist, not a fixed number of rounds)
        self.reads: set[str] = set() if reads is None else reads

    @property
    def opset(self) -> int:
        return self.view.opset_of(self.node.domain)

    # -- values -------------------------------------------------------------------------
    def input(self, i: int) -> str | None:
        """Name of input ``i``, or None when absent or empty."""
        ins = self.node.inputs
        if i >= len(ins) or ins[i] is None or not ins[i].name:
            return None
        return ins[i].name

    def output(self, i: int) -> str | None:
        outs = self.node.outputs
        if i >= len(outs) or not outs[i].name:
            return None
        return outs[i].name

    def shape(self, value: str | None) -> tuple[Any, ...] | None:
        """Static shape: ints where known, the symbol (str) or None elsewhere; None if unknown."""
        return None if value is None else self.view.shape(value)

    def rank(self, value: str | None) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    def const(self, value: str | None) -> np.ndarray | None:
        """The value's constant array (initializer or Constant output), or None."""
        return None if value is None else self.view.const(value)

    def is_param(self, value: str | None) -> bool:
        """True for a constant tensor that surgery may slice (not a graph input)."""
        return value is not None and self.view.is_param(value)

    def const_ints(self, value: str | None) -> list[int] | None:
        arr = self.const(value)
        return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]

    # -- attributes ---------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        a = self.node.attributes.get(name)
        if a is None:
            return default
        v = a.value
        if isinstance(v, Sequence) and not isinstance(v, str | bytes):
            return list(v)
        return v

    # -- channel slots ------------------------------------------------------------------
    def slots(self, value: str | None) -> list[Slot]:
        """Channel slots known on ``value`` (from its producer or any consumer)."""
        if value is None:
            return []
        self.reads.add(value)
        ss = sorted(self._known.get(value, ()))
        # a slot nested in a larger one (a head axis next to its (heads, head_dim) composite,
        # found in another order of the rules) follows the larger: the analysis ties them
        return [s for s in ss if not any(set(s.axes) < set(o.axes) for o in ss)]

    def axis(self, value: str, axis: int) -> int:
        r = self.rank(value)
        if r is None:
            raise UnknownRank(f"rank of {value} is unknown")
        return axis + r if axis < 0 else axis

    def slot_size(self, slot: Slot) -> int | None:
        s = self.shape(slot.value)
        if s is None or any(not isinstance(s[a], int) for a in slot.axes):
            return None
        n = math.prod(s[a] for a in slot.axes)
        if n > MAX_SLOT_ELEMENTS:
            raise ValueError(f"channel slot {slot} has {n} elements (limit {MAX_SLOT_ELEMENTS})")
        return n

    def static(self, value: str | None) -> bool:
        s = self.shape(value)
        return s is not None and all(isinstance(d, int) for d in s)
