"""One registry for all op knowledge: a pure function per (domain, op_type, opset range).

``lookup`` finds exactly one rule or none; a duplicate or overlapping registration raises, so
two files can never disagree about an op. An op without a rule blocks its channels (the graph
builder turns ``None`` into a `Blocked` with the reason), it is never treated as element-wise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir

    from spa_nm.rules._context import RuleContext

__all__ = ["RuleEntry", "lookup", "macs_of", "nm_axis_of", "rule", "supported_ops"]

RuleFn = "Callable[[ir.Node, RuleContext], OpFacts | Blocked]"
MacsFn = "Callable[[ir.Node, RuleContext], int]"

_MAX_OPSET = 10_000


@dataclass(frozen=True, slots=True)
class RuleEntry:
    domain: str
    op_type: str
    lo: int
    hi: int
    fn: Callable[..., object]
    macs: Callable[..., int] | None
    # (input index, axis) of the weight and its reduction axis, for N:M blocks; None: no weight
    nm_axis: Callable[..., tuple[int, int] | None] | None = None
    # derived(node, view) -> facts.Derived | None: the node's output is a constant computed
    # from initializers (a dequantized weight) that surgery slices through its sources
    derived: Callable[..., object] | None = None


_RULES: dict[tuple[str, str], list[RuleEntry]] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def rule(
    *op_types: str,
    domain: str = "",
    opsets: tuple[int, int | None] = (1, None),
    macs: Callable[..., int] | None = None,
    nm_axis: Callable[..., tuple[int, int] | None] | None = None,
    derived: Callable[..., object] | None = None,
) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Register ``fn`` as the rule of ``op_types`` for opsets ``lo <= v <= hi`` (None: open)."""
    lo, hi = opsets[0], _MAX_OPSET if opsets[1] is None else opsets[1]
    if lo > hi:
        raise ValueError(f"empty opset range {opsets} for {op_types}")

    def register(fn: Callable[..., object]) -> Callable[..., object]:
        for op_type in op_types:
            key = (_norm_domain(domain), op_type)
            for other in _RULES.get(key, []):
                if not (hi < other.lo or lo > other.hi):
                    raise ValueError(
                        f"rule for {domain or 'ai.onnx'}::{op_type} opsets {lo}-{hi} overlaps "
                        f"{other.fn.__module__}.{other.fn.__name__} ({other.lo}-{other.hi})"
                    )
            _RULES.setdefault(key, []).append(RuleEntry(key[0], op_type, lo, hi, fn, macs, nm_axis, derived))
        return fn

    return register


def lookup(domain: str, op_type: str, opset: int) -> RuleEntry | None:
    """The one rule for this op at this opset, or None."""
    for entry in _RULES.get((_norm_domain(domain), op_type), []):
        if entry.lo <= opset <= entry.hi:
            return entry
    return None


def macs_of(node: ir.Node, ctx: RuleContext) -> int:
    """Multiply-accumulates of ``node`` (0 for ops whose rule does not count them)."""
    entry = lookup(node.domain, node.op_type, ctx.opset)
    if entry is None or entry.macs is None:
        return 0
    return int(entry.macs(node, ctx))


def nm_axis_of(node: ir.Node, ctx: RuleContext) -> tuple[int, int] | None:
    """(weight input index, reduction axis) of ``node`` for N:M sparsity, or None."""
    entry = lookup(node.domain, node.op_type, ctx.opset)
    if entry is None or entry.nm_axis is None:
        return None
    return entry.nm_axis(node, ctx)


def supported_ops() -> list[RuleEntry]:
    """Every registered rule, sorted by (domain, op_type, lo)."""
    return sorted(
        (e for entries in _RULES.values() for e in entries),
        key=lambda e: (e.domain, e.op_type, e.lo),
    )
