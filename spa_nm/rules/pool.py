"""Ops that act along spatial (non-channel) axes: pooling, reductions, Softmax, Resize, Pad.

Axes the op leaves alone pass channels through; a channel slot on an axis the op mixes, reduces
or resizes blocks (METHODS.md §1.2 item 4: a Reduce or Softmax over the channel axis is a sink).
"""

from __future__ import annotations

import numpy as np

import onnx_ir as ir
from spa_nm.facts import FixInfo, Fixup, OpFacts
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import (
    RestrictedContext,
    block,
    copy_transfer,
    map_axes,
    unary_transfer,
)
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _sizes(ctx: RuleContext):
    return lambda s: ctx.slot_size(s)


def _keep(ctx: RuleContext, axes: list[int], what: str, fn=None) -> OpFacts:
    x, y = ctx.input(0), ctx.output(0)
    facts = OpFacts()
    if ctx.rank(x) is None:
        if ctx.slots(x) or ctx.slots(y):
            return block(ctx, "input rank is unknown")
        return facts
    map_axes(ctx, x, y, {a: a for a in axes}, facts, what=what)
    facts.transfer = (
        copy_transfer(facts.links, _sizes(ctx))
        if fn is None
        else unary_transfer(facts.links, _sizes(ctx), fn)
    )
    return facts


@rule("MaxPool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "AveragePool")
def pool(node, ctx: RuleContext) -> OpFacts:
    """Pool over spatial axes; N and C pass through. A constant stays constant, except where
    zero padding is averaged in."""
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
        return block(ctx, "MaxPool indices output is used")
    fn = None
    if (
        node.op_type == "AveragePool"
        and int(ctx.attr("count_include_pad", 0))
        and any(ctx.attr("pads") or [])
    ):
        fn = lambda v: np.where(v == 0, 0.0, np.nan)  # noqa: E731
    if node.op_type in ("LpPool", "GlobalLpPool"):
        fn = lambda v: np.where(v == 0, 0.0, np.nan)  # noqa: E731
    return _keep(ctx, [0, 1], "pooling mixes the spatial axes", fn)


def _reduce_axes(ctx: RuleContext) -> list[int] | None:
    op = ctx.node.op_type
    x = ctx.input(0)
    r = ctx.rank(x)
    from_input = ctx.opset >= 18 or (op == "ReduceSum" and ctx.opset >= 13)
    if from_input:
        axes = ctx.const_ints(ctx.input(1)) if ctx.input(1) else []
        if axes is None:
            return None
    else:
        axes = ctx.attr("axes") or []
    if not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return []
        return list(range(r))
    return sorted(ctx.axis(x, a) for a in axes)


_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")  # fmt: skip


@rule(*_REDUCE)
def reduce(node, ctx: RuleContext) -> OpFacts:
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    axes = _reduce_axes(ctx)
    if axes is None:
        return block(ctx, "reduction axes are computed at run time")
    keep = int(ctx.attr("keepdims", 1))
    amap, j = {}, 0
    for a in range(r):
        if a in axes:
            j += keep
            continue
        amap[a] = j
        j += 1
    facts = OpFacts()
    stats = set()
    # a reduction over a whole channel slot is a statistic of the channels (LayerNorm or
    # RMSNorm written out as ReduceMean / ReduceSum / ReduceSumSquare / ReduceL2, a softmax's
    # ReduceMax): removing channels changes it, so it is approximate, never a hard block
    for s in ctx.slots(x):
        if set(s.axes) <= set(axes):
            stats.add(s)
            facts.approximate.append(
                block(
                    ctx,
                    f"{node.op_type} reduces it: a statistic over channel slot {s} (a "
                    "normalization's) changes when channels are removed",
                    (x,),
                )
            )
    if not map_axes(RestrictedContext(ctx, {x: stats}), x, y, amap, facts, what=f"{node.op_type} reduces it"):
        return facts
    xs = ctx.shape(x)
    n = 1
    for a in axes:
        n *= xs[a] if isinstance(xs[a], int) else 0
    fns = {  # the reduction of n copies of the constant v
        "ReduceMean": lambda v: v,
        "ReduceMax": lambda v: v,
        "ReduceMin": lambda v: v,
        "ReduceSum": lambda v: v * n,
        "ReduceProd": lambda v: v**n,
        "ReduceL1": lambda v: np.abs(v) * n,
        "ReduceL2": lambda v: np.abs(v) * np.sqrt(n),
        "ReduceSumSquare": lambda v: v * v * n,
        "ReduceLogSum": lambda v: np.log(v * n),
        "ReduceLogSumExp": lambda v: v + np.log(n),
    }
    fn = fns[node.op_type]
    facts.transfer = unary_transfer(facts.links, _sizes(ctx), fn)
    return facts


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, ctx: RuleContext) -> OpFacts:
    """Normalizes along ``axis`` (from opset 13; before, over every axis from ``axis`` on)."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    default = -1 if ctx.opset >= 13 else 1
    axis = ctx.axis(x, int(ctx.attr("axis", default)))
    mixed = [axis] if ctx.opset >= 13 else list(range(axis, r))
    return _keep(
        ctx,
        [a for a in range(r) if a not in mixed],
        f"{node.op_type} normalizes over it",
        lambda v: np.full_like(v, np.nan),
    )


def _resize_fixup(node_name: str, y: str, sizes_index: int) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        old, new = info.old_shape(y), info.new_shape(y)
        if tuple(old) == tuple(new):
            return
        sizes = np.asarray(info.const(node.inputs[sizes_index])).reshape(-1)
        axes_attr = node.attributes.get("axes")
        axes = list(axes_attr.value) if axes_attr is not None else list(range(len(new)))
        out = np.array(sizes, dtype=np.int64)
        for k, a in enumerate(axes):
            out[k] = int(new[a])
        info.new_const(node, sizes_index, out)

    return Fixup(node_name, "rewrite Resize sizes", apply)


@rule("Resize", "Upsample")
def resize(node, ctx: RuleContext) -> OpFacts:
    """Axes whose size does not change pass through; resized channel axes block."""
    x, y = ctx.input(0), ctx.output(0)
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None:
        if ctx.slots(x) or ctx.slots(y):
            return block(ctx, "shapes are unknown")
        return OpFacts()
    same = [a for a in range(len(xs)) if xs[a] == ys[a]]
    facts = _keep(ctx, same, "it is resized")
    sizes_index = 3
    if node.op_type == "Resize" and ctx.opset >= 11 and ctx.input(sizes_index) is not None:
        if ctx.const(ctx.input(sizes_index)) is None:
            if ctx.slots(x) or ctx.slots(y):
                return block(ctx, "Resize sizes are computed at run time")
        else:
            facts.fixups.append(_resize_fixup(node.name, y, sizes_index))
    return facts


@rule("Pad")
def pad(node, ctx: RuleContext) -> OpFacts:
    """Axes padded by zero on both sides pass through."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    if ctx.opset < 11:
        pads = ctx.attr("pads") or ctx.attr("paddings")
        value = float(ctx.attr("value", 0.0))
        axes = list(range(r))
    else:
        pads = ctx.const_ints(ctx.input(1))
        cv = ctx.input(2)
        value = 0.0 if cv is None else ctx.const(cv)
        axes = ctx.const_ints(ctx.input(3)) if ctx.input(3) else list(range(r))
        if pads is None or value is None or axes is None:
            return block(ctx, "Pad amounts are computed at run time")
        value = float(np.asarray(value).reshape(-1)[0]) if np.asarray(value).size else 0.0
        axes = [ctx.axis(x, a) for a in axes]
    n = len(axes)
    padded = {a for k, a in enumerate(axes) if pads[k] != 0 or pads[k + n] != 0}
    mode = ctx.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    fn = None
    if padded and mode == "constant":
        fn = lambda v, c=value: np.where(v == c, v, np.nan)  # noqa: E731
    return _keep(ctx, [a for a in range(r) if a not in padded], "it is padded", fn)
