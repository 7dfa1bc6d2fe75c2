"""The frozen vocabulary that op rules return and the rest of spa_nm reads.

A *slot* is a channel space on one value: one axis, or several contiguous axes whose flattened
index is the channel index (a channel axis split by a Reshape, as in a channel shuffle or a head
split). Initializer axes are slots too. A `Link` says that element ``a_idx[i]`` of slot ``a`` and
element ``b_idx[i]`` of slot ``b`` live or die together; the graph unites linked elements, and
every connected set of elements is one prunable *unit* (METHODS.md §1.3).

Rules never mutate the model. What surgery must change besides initializers (Reshape targets,
Split sizes, Slice bounds, the ``group`` attribute) is returned as a `Fixup` callable that runs on
the copy being pruned, with the new shapes of every value.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = [
    "Blocked",
    "Derived",
    "FixInfo",
    "Fixup",
    "Link",
    "OpFacts",
    "Param",
    "Role",
    "Slot",
    "Transfer",
]


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """A channel space: ``axes`` (contiguous, ascending) of the value named ``value``."""

    value: str
    axes: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.value}[{','.join(map(str, self.axes))}]"


class Role(str, enum.Enum):
    """What an initializer slice is to its channel; criteria read roles, never op types."""

    WEIGHT_OUT = "weight_out"  # producer rows: the channel is computed from them
    WEIGHT_IN = "weight_in"  # consumer columns: the channel is read through them
    BIAS = "bias"
    NORM_SCALE = "norm_scale"
    NORM_SHIFT = "norm_shift"
    NORM_STAT = "norm_stat"  # running mean / variance: not zeroed by the oracle
    OTHER = "other"  # per-channel constants of element-wise ops, PRelu slopes
    DIVISOR = "divisor"  # per-channel divisors: zeroing them would divide by zero


@dataclass(frozen=True, slots=True, eq=False)
class Link:
    """Element ``a_idx[i]`` of slot ``a`` is tied to element ``b_idx[i]`` of slot ``b``.

    ``None`` stands for ``arange(size)``. ``a`` is the input side and ``b`` the output side of
    the node that declared it (for a self-tie, both are the same slot).
    """

    a: Slot
    b: Slot
    a_idx: np.ndarray | None = None
    b_idx: np.ndarray | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Param:
    """Axis ``axis`` of initializer ``name``: index ``p`` dies with element ``idx[p]`` of ``slot``.

    ``idx`` None means the identity map.
    """

    name: str
    axis: int
    slot: Slot
    role: Role
    idx: np.ndarray | None = None

    @property
    def param_slot(self) -> Slot:
        return Slot(self.name, (self.axis,))


@dataclass(frozen=True, slots=True)
class Blocked:
    """The node cannot have the channels of ``values`` changed; ``reason`` says why."""

    node: str
    op: str
    reason: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FixInfo:
    """What a fixup sees: old and new static shapes, and the kept indices of every slot."""

    old_shape: Callable[[str], tuple[Any, ...] | None]
    new_shape: Callable[[str], tuple[Any, ...] | None]
    kept: Callable[[Slot], np.ndarray | None]
    new_const: Callable[..., Any]  # new_const(node, input_index, array): set a constant input
    const: Callable[..., Any]  # const(ir.Value) -> the value's constant array (or None)


@dataclass(frozen=True, slots=True)
class Fixup:
    """An edit of ``node`` (not of an initializer slice) that surgery applies after slicing."""

    node: str
    describe: str
    apply: Callable[[ir.Node, FixInfo], None]


@dataclass(frozen=True, slots=True, eq=False)
class Derived:
    """A constant that node ``node`` computes from initializers (DequantizeLinear of an int8
    weight): rules read it as a parameter, surgery slices its ``sources`` instead.

    ``sources(axis)`` lists the (initializer, axis) pairs that lose the same entries when the
    value's ``axis`` loses entries; ``zero(get, axis, idx)`` edits the source arrays (``get``
    returns a writable array per initializer name) so that entries ``idx`` of ``axis`` become
    exactly 0 (the zero-group oracle).
    """

    node: str
    value: np.ndarray
    sources: Callable[[int], list[tuple[str, int]]]
    zero: Callable[[Callable[[str], np.ndarray], int, np.ndarray], None]


# A transfer maps the constants carried by the zeroed channels of the node's input slots to
# those of its output slots (METHODS.md §1.4, the BN + activation trap). Arrays hold one value
# per slot element; NaN means "not a known constant".
Transfer = Callable[[Mapping[Slot, np.ndarray]], dict[Slot, np.ndarray]]


@dataclass(slots=True)
class OpFacts:
    """Everything one node says about channels."""

    links: list[Link] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    fixups: list[Fixup] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    # Output slots whose zeroed channels are exactly zero because the node's own member
    # parameters were zeroed (producers, affine norms): they reset the carried constant.
    resets: list[Slot] = field(default_factory=list)
    transfer: Transfer | None = None
    # Consumers that can absorb a constant input channel into a bias: slot -> fold function
    # fold(node, kept_cols_mask_removed, kappa) is applied by surgery.
    folds: dict[Slot, Callable[..., None]] = field(default_factory=dict)
    # Channels of these values can be removed, but not exactly (a LayerNorm/RMSNorm over the
    # channel axis changes its statistics): blocked unless the analysis allows approximation,
    # then the groups are reported as approximate (METHODS.md §1.3, LayerNorm row).
    approximate: list[Blocked] = field(default_factory=list)
