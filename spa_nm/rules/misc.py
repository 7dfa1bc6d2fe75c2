"""Ops that carry no channels themselves but must not block: constants and shape reads."""

from __future__ import annotations

import numpy as np

from spa_nm.facts import OpFacts, Param, Role
from spa_nm.passes import slice_ints
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block, map_axes
from spa_nm.rules._registry import rule

__all__: list[str] = []


@rule("Constant")
def constant(node, ctx: RuleContext) -> OpFacts:
    """A constant is data: its slices are declared by the ops that read it."""
    return OpFacts()


@rule("Shape", "Size")
def shape_of(node, ctx: RuleContext) -> OpFacts:
    """Reading the size of a channel axis would see the pruned size: block those channels."""
    x = ctx.input(0)
    r = ctx.rank(x)
    slots = ctx.slots(x)
    if not slots:
        return OpFacts()
    if node.op_type == "Size" or r is None:
        return block(ctx, f"{node.op_type} reads the channel count at run time", (x,))
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end")
    start = start + r if start < 0 else start
    end = r if end is None else (int(end) + r if int(end) < 0 else int(end))
    read = {a for s in slots for a in s.axes if start <= a < end}
    if not read:
        return OpFacts()
    # fine when every reader picks only other entries: Gather(shape, const) of the batch dim
    if node.outputs[0].is_graph_output():
        return block(ctx, "Shape reads the channel count at run time", (x,))
    positions = list(range(start, end))
    for c in node.outputs[0].consumers():
        if c.op_type == "Slice" and c.inputs[0] is node.outputs[0]:
            # x.shape[:-2] as Shape -> Slice: fine when the slice skips the channel axes
            picked = slice_ints(c, positions, lambda v: ctx.const(v.name))
            if picked is None or set(picked) & read:
                return block(ctx, "Shape reads the channel count at run time", (x,))
            continue
        idx = ctx.const(c.inputs[1].name) if c.op_type == "Gather" and len(c.inputs) > 1 and c.inputs[1] is not None else None
        axis = c.attributes.get("axis")
        if idx is None or (axis is not None and int(axis.value) != 0):
            return block(ctx, "Shape reads the channel count at run time", (x,))
        picked = {(int(i) + (end - start)) % (end - start) + start for i in np.asarray(idx).reshape(-1)}
        if picked & read:
            return block(ctx, "Shape reads the channel count at run time", (x,))
    return OpFacts()


@rule("Gather")
def gather(node, ctx: RuleContext) -> OpFacts:
    """Gather along a non-channel axis: the other axes pass through (shifted by the indices'
    rank); gathering along a channel axis blocks."""
    data, idx, y = ctx.input(0), ctx.input(1), ctx.output(0)
    r, ri = ctx.rank(data), ctx.rank(idx)
    if r is None or ri is None:
        if ctx.slots(data) or ctx.slots(y):
            return block(ctx, "shapes are unknown")
        return OpFacts()
    axis = ctx.axis(data, int(ctx.attr("axis", 0)))
    amap = {a: (a if a < axis else a + ri - 1) for a in range(r) if a != axis}
    facts = OpFacts()
    if ctx.is_param(data):
        # an embedding table [V, D] read by token ids: its D axis produces the channel
        # (METHODS.md §1.3, Gather row), a cut like a Linear's weight rows
        inverse = {v: k for k, v in amap.items()}
        for s in ctx.slots(y):
            if len(s.axes) != 1 or s.axes[0] not in inverse:
                return block(ctx, f"Gather of a constant table does not carry channel slot {s}")
            facts.params.append(Param(data, inverse[s.axes[0]], s, Role.WEIGHT_OUT))
            facts.resets.append(s)
        return facts
    map_axes(ctx, data, y, amap, facts, what="Gather indexes it")
    from spa_nm.rules._helpers import copy_transfer

    facts.transfer = copy_transfer(facts.links, lambda s: ctx.slot_size(s))
    return facts
