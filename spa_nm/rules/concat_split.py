"""Concat, Split and Slice: channels move to or from an offset on the concatenation axis.

Concat: input i's channel c is output channel off_i + c. Split and Slice are the inverse; their
sizes and bounds are rewritten from the kept channels (METHODS.md §1.3). Slice with a step
other than 1 on a channel axis blocks.
"""

from __future__ import annotations

import numpy as np

import onnx_ir as ir
from spa_nm.facts import FixInfo, Fixup, Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block, copy_transfer, map_axes, passthrough
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _with_copy(ctx: RuleContext, facts: OpFacts) -> OpFacts:
    facts.transfer = copy_transfer(facts.links, lambda s: ctx.slot_size(s))
    return facts


def _offsets(sizes: list[int]) -> list[int]:
    return [int(v) for v in np.concatenate([[0], np.cumsum(sizes)[:-1]])]


def _pieces(ctx: RuleContext, whole: str, parts: list[str], axis: int, facts: OpFacts) -> bool:
    """Link each part to its interval of ``whole`` on ``axis``; other axes pass through."""
    r = ctx.rank(whole)
    shapes = [ctx.shape(p) for p in parts]
    on_axis = [s for v in (whole, *parts) for s in ctx.slots(v) if axis in s.axes]
    if r is None or any(s is None for s in shapes):
        facts.blocked.append(block(ctx, "shapes are unknown"))
        return False
    if any(not isinstance(s[axis], int) for s in shapes):
        if on_axis:
            facts.blocked.append(block(ctx, "sizes on the concatenation axis are unknown"))
            return False
        # no channel on the axis: its sizes are not needed
        shapes = [[1 if k == axis else d for k, d in enumerate(s)] for s in shapes]
    sizes = [s[axis] for s in shapes]
    offs = _offsets(sizes)
    if any(len(s.axes) != 1 for s in on_axis):
        facts.blocked.append(block(ctx, "a composite channel slot spans the concatenation axis"))
        return False
    sw = Slot(whole, (axis,))
    if on_axis:
        for p, off, n in zip(parts, offs, sizes, strict=True):
            if ctx.is_param(p):
                facts.params.append(Param(p, axis, sw, Role.OTHER, np.arange(off, off + n)))
            else:
                facts.links.append(Link(Slot(p, (axis,)), sw, None, np.arange(off, off + n)))
    other = {a: a for a in range(r) if a != axis}
    for p in parts:
        if ctx.is_param(p):
            # a constant part (ViT's class token) loses the entries of a channel on another
            # axis with it: a member slice
            for s in ctx.slots(whole):
                if axis in s.axes:
                    continue
                if len(s.axes) != 1 or ctx.shape(p)[s.axes[0]] != ctx.shape(whole)[s.axes[0]]:
                    facts.blocked.append(block(ctx, f"constant part {p} spans channel slot {s}"))
                    return False
                facts.params.append(Param(p, s.axes[0], s, Role.OTHER))
            continue
        sub = _Hide(ctx, axis)
        if not map_axes(sub, p, whole, other, facts):
            return False
    return True


class _Hide:
    """Hide the slots on one axis (handled by the caller) from `map_axes`."""

    def __init__(self, ctx: RuleContext, axis: int) -> None:
        self._ctx, self._axis = ctx, axis

    def slots(self, value):
        return [s for s in self._ctx.slots(value) if self._axis not in s.axes]

    def __getattr__(self, name):
        return getattr(self._ctx, name)


@rule("Concat")
def concat(node, ctx: RuleContext) -> OpFacts:
    y = ctx.output(0)
    axis = ctx.axis(y, int(ctx.attr("axis", 1)))
    parts = [ctx.input(i) for i in range(len(node.inputs))]
    facts = OpFacts()
    present = [p for p in parts if p]
    if len(present) == 1 and not ctx.is_param(present[0]):
        # one part (a cache Concat with no past, as onnxruntime's optimizer leaves them): a copy
        passthrough(ctx, present[0], y, facts=facts)
        return _with_copy(ctx, facts)
    if not _pieces(ctx, y, present, axis, facts):
        return facts
    # links run part -> whole, which is input -> output: copy constants along them
    facts = _with_copy(ctx, facts)
    members = list(facts.params)
    if members:
        # a constant part is a member slice: the oracle zeroes it, so its channels carry 0
        copy = facts.transfer

        def transfer(kappa):
            out = copy(kappa)
            for p in members:
                k = out.setdefault(p.slot, np.full(ctx.slot_size(p.slot), np.nan))
                if p.idx is None:  # beside the other parts on another axis: 0 only if they are
                    k[:] = np.where(k == 0, 0.0, np.nan)
                else:
                    k[p.idx] = 0.0
            return out

        facts.transfer = transfer
    return facts


def _split_fixup(node_name: str, outs: list[str], axis: int, opset: int, has_input: bool) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        new = [int(info.new_shape(o)[axis]) for o in outs]
        old = [int(info.old_shape(o)[axis]) for o in outs]
        if new == old:
            return
        if opset < 13:
            node.attributes["split"] = ir.AttrInt64s("split", new)
        else:
            if "num_outputs" in node.attributes:
                del node.attributes["num_outputs"]
            info.new_const(node, 1, np.asarray(new, dtype=np.int64))

    return Fixup(node_name, "rewrite Split sizes", apply)


@rule("Split")
def split(node, ctx: RuleContext) -> OpFacts:
    x = ctx.input(0)
    outs = [ctx.output(i) for i in range(len(node.outputs))]
    axis = ctx.axis(x, int(ctx.attr("axis", 0)))
    facts = OpFacts()
    if ctx.opset >= 13 and ctx.input(1) is not None and ctx.const(ctx.input(1)) is None:
        return block(ctx, "Split sizes are computed at run time")
    # links must run input -> output: build them whole -> part
    tmp = OpFacts()
    if not _pieces(ctx, x, [o for o in outs if o], axis, tmp):
        return tmp
    for ln in tmp.links:
        facts.links.append(Link(ln.b, ln.a, ln.b_idx, ln.a_idx))
    facts.blocked.extend(tmp.blocked)
    if any(axis in s.axes for v in (x, *outs) for s in ctx.slots(v)):
        facts.fixups.append(
            _split_fixup(node.name, outs, axis, ctx.opset, ctx.input(1) is not None)
        )
    return _with_copy(ctx, facts)


def _slice_inputs(ctx: RuleContext):
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes") or list(range(len(starts)))
        return starts, ends, axes, [1] * len(starts)
    starts, ends = ctx.const_ints(ctx.input(1)), ctx.const_ints(ctx.input(2))
    if starts is None or ends is None:
        return None
    axes = ctx.const_ints(ctx.input(3)) if ctx.input(3) else list(range(len(starts)))
    steps = ctx.const_ints(ctx.input(4)) if ctx.input(4) else [1] * len(starts)
    if axes is None or steps is None:
        return None
    return starts, ends, axes, steps


def _clamp(v: int, dim: int) -> int:
    v = v + dim if v < 0 else v
    return max(0, min(v, dim))


def _slice_fixup(
    node_name: str, x: str, y: str, k: int, axis: int, start: int, opset: int
) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        if tuple(info.new_shape(y)) == tuple(info.old_shape(y)) and tuple(
            info.new_shape(x)
        ) == tuple(info.old_shape(x)):
            return
        kept = info.kept(_axis_slot(info, x, axis))
        new_start = int(np.sum(kept < start)) if kept is not None else start
        new_end = new_start + int(info.new_shape(y)[axis])
        if opset < 10:
            starts = list(node.attributes["starts"].value)
            ends = list(node.attributes["ends"].value)
            starts[k], ends[k] = new_start, new_end
            node.attributes["starts"] = ir.AttrInt64s("starts", starts)
            node.attributes["ends"] = ir.AttrInt64s("ends", ends)
            return
        for idx, val in ((1, new_start), (2, new_end)):
            arr = np.array(np.asarray(info.const(node.inputs[idx])).reshape(-1))
            arr[k] = val
            info.new_const(node, idx, arr.astype(np.int64))

    return Fixup(node_name, "rewrite Slice bounds", apply)


def _axis_slot(info, x, axis):
    return Slot(x, (axis,))


@rule("Slice")
def slice_(node, ctx: RuleContext) -> OpFacts:
    x, y = ctx.input(0), ctx.output(0)
    xs = ctx.shape(x)
    facts = OpFacts()
    if not (ctx.slots(x) or ctx.slots(y)):
        return facts
    got = _slice_inputs(ctx)
    if got is None or xs is None:
        return block(ctx, "Slice bounds are computed at run time")
    starts, ends, axes, steps = got
    axes = [ctx.axis(x, a) for a in axes]
    sliced = {}
    for k, (s, e, a, st) in enumerate(zip(starts, ends, axes, steps, strict=True)):
        sliced[a] = (k, s, e, st)
    r = len(xs)
    map_axes(_HideAxes(ctx, set(sliced)), x, y, {a: a for a in range(r) if a not in sliced}, facts)
    for a, (k, s, e, st) in sliced.items():
        on = [sl for v in (x, y) for sl in ctx.slots(v) if a in sl.axes]
        if not on:
            continue
        if any(len(sl.axes) != 1 for sl in on):
            return block(ctx, "Slice cuts a composite channel slot")
        if st != 1:
            return block(ctx, f"Slice with step {st} on channel axis {a}")
        dim = xs[a]
        if not isinstance(dim, int):
            return block(ctx, "Slice on a channel axis of unknown size")
        s0, e0 = _clamp(s, dim), _clamp(e, dim)
        n = max(0, e0 - s0)
        facts.links.append(Link(Slot(x, (a,)), Slot(y, (a,)), np.arange(s0, s0 + n), None))
        facts.fixups.append(_slice_fixup(node.name, x, y, k, a, s0, ctx.opset))
    return _with_copy(ctx, facts)


class _HideAxes(_Hide):
    def __init__(self, ctx: RuleContext, axes: set[int]) -> None:
        self._ctx, self._axes = ctx, axes

    def slots(self, value):
        return [s for s in self._ctx.slots(value) if not (set(s.axes) & self._axes)]
