"""Shape ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose (METHODS.md §1.3).

Reshape-like ops are described by the dim-group algebra of `_helpers.reshape_facts`; only
Reshape carries a shape constant to rewrite. Transpose moves each channel slot per ``perm``.
"""

from __future__ import annotations

import numpy as np

import onnx_ir as ir
from spa_nm.facts import FixInfo, Fixup, Link, OpFacts
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import (
    RestrictedContext,
    block,
    copy_transfer,
    map_axes,
    reshape_facts,
    split_composites,
)
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _with_copy(ctx: RuleContext, facts: OpFacts) -> OpFacts:
    facts.transfer = copy_transfer(facts.links, lambda s: ctx.slot_size(s))
    return facts


def _reshape_fixup(node_name: str, x: str, y: str, allowzero: bool) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        old = info.old_shape(y)
        new = info.new_shape(y)
        if tuple(old) == tuple(new):
            return
        target = [int(v) for v in np.asarray(info.const(node.inputs[1])).reshape(-1)]
        nx = info.new_shape(x)
        out = []
        for k, t in enumerate(target):
            if t == -1:
                out.append(-1)
            elif t == 0 and not allowzero:  # "copy the input dim": still right if unchanged
                out.append(0 if nx[k] == new[k] or old[k] == new[k] else int(new[k]))
            else:
                out.append(int(new[k]) if old[k] != new[k] else t)
        info.new_const(node, 1, np.asarray(out, dtype=np.int64))

    return Fixup(node_name, "rewrite the Reshape target shape", apply)


# ops the torch exporter puts between a shape Concat and the Expand that reads it
# (``Reshape(t, [-1])``, ``Where(Equal(t, -1), ones, t)``): they pass ``t``'s entries on
_TARGET_CHAIN = {"Reshape", "Where", "Equal", "Shape", "ConstantOfShape", "Mul", "Cast", "Identity"}


def _is_constant(v: ir.Value | None) -> bool:
    return v is None or v.const_value is not None or (
        v.producer() is not None and v.producer().op_type == "Constant"
    )


def _source_concat(v: ir.Value) -> ir.Node | None:
    """The ``Concat`` a shape target comes from, directly or through the exporter's -1 guard
    (1-D Reshape, Where choosing between a constant and the Concat's value, Cast)."""
    for _ in range(8):
        p = v.producer()
        if p is None:
            return None
        if p.op_type == "Concat":
            return p
        if p.op_type in ("Reshape", "Cast", "Identity"):
            v = p.inputs[0]
        elif p.op_type == "Where" and len(p.inputs) == 3:
            data = [i for i in p.inputs[1:] if not _is_constant(i)]
            if len(data) != 1:
                return None
            v = data[0]
        else:
            return None
    return None


def _reaches_only(start: ir.Value, node: ir.Node) -> bool:
    """Whether everything computed from ``start`` ends in ``node`` (nobody else reads the
    target, so rewriting its Concat in place changes ``node`` alone)."""
    todo, seen = [start], set()
    while todo:
        v = todo.pop()
        if v.is_graph_output():
            return False
        for use in v.consumers():
            if use is node or id(use) in seen:
                continue
            if use.op_type not in _TARGET_CHAIN:
                return False
            seen.add(id(use))
            todo.extend(use.outputs)
    return True


def _concat_parts(ctx: RuleContext, shape: str, axes: list[int], node: ir.Node | None = None) -> dict[int, tuple[int, int]] | None:
    """For a target built by ``Concat`` (axis 0) that only this node reads: axis -> (Concat
    input, position in it), where every such input is a constant; else None. With ``node``,
    the Concat may sit behind the exporter's -1 guard, provided nothing else reads it."""
    v = ctx.view.values.get(shape)
    if v is None or v.is_graph_output():
        return None
    cat = v.producer()
    if node is not None and cat is not None and cat.op_type != "Concat":
        cat = _source_concat(v)
        if cat is None or not _reaches_only(cat.outputs[0], node):
            return None
    if cat is None or cat.op_type != "Concat":
        return None
    where: dict[int, tuple[int, int]] = {}
    pos = 0
    for i, part in enumerate(cat.inputs):
        vals = None if part is None else ctx.view.partial_ints(part.name)
        if vals is None:
            return None
        for k in range(len(vals)):
            if pos + k in axes:
                if ctx.const(part.name) is None:
                    return None
                where[pos + k] = (i, k)
        pos += len(vals)
    return where if set(where) == set(axes) else None


def _concat_target_fixup(node_name: str, y: str, axes: list[int], parts, index: int = 1) -> Fixup:
    """Rewrite the constant Concat parts of the shape input ``index`` at the changed axes."""

    def apply(node: ir.Node, info: FixInfo) -> None:
        old, new = info.old_shape(y), info.new_shape(y)
        cat = node.inputs[index].producer()
        if cat is not None and cat.op_type != "Concat":
            cat = _source_concat(node.inputs[index])  # behind the -1 guard, read by node alone
        edits: dict[int, np.ndarray] = {}
        for a in axes:
            if old[a] == new[a]:
                continue
            i, k = parts[a]
            arr = edits.setdefault(i, np.array(info.const(cat.inputs[i]), dtype=np.int64).reshape(-1))
            arr[k] = int(new[a])
        if not edits:
            return
        if cat.outputs[0] is node.inputs[index] and len(node.inputs[index].uses()) > 1:
            # the target is shared (Q, K and V views): this Reshape gets its own Concat
            own = ir.Node(
                cat.domain, "Concat", list(cat.inputs), attributes=list(cat.attributes.values()),
                name=f"{cat.name or 'Concat'}_{node.name or 'pruned'}",
            )  # fmt: skip
            own.outputs[0].name = f"{node.inputs[index].name}_{node.name or 'pruned'}"
            own.outputs[0].shape = node.inputs[index].shape
            own.outputs[0].type = node.inputs[index].type
            cat.graph.insert_after(cat, own)
            node.replace_input_with(index, own.outputs[0])
            cat = own
        for i, arr in edits.items():
            info.new_const(cat, i, arr)

    return Fixup(node_name, "rewrite the constant parts of the Reshape target's Concat", apply)


@rule("Reshape", opsets=(5, None))
def reshape(node, ctx: RuleContext) -> OpFacts:
    x, shape, y = ctx.input(0), ctx.input(1), ctx.output(0)
    facts = OpFacts()
    if not (ctx.slots(x) or ctx.slots(y)):
        return facts
    if ctx.const(shape) is None:
        # a run-time target is fine when every channel axis of the output is its -1 entry
        # (x.view(x.size(0), -1)): the size then follows the pruned input by itself
        target = ctx.view.partial_ints(shape)
        if target is None:
            return block(ctx, "Reshape target shape is computed at run time")
        if not reshape_facts(ctx, x, y, facts):
            return facts
        axes = {a for ln in facts.links for sl in (ln.a, ln.b) if sl.value == y for a in sl.axes}
        if not axes or any(a >= len(target) for a in axes):
            return block(ctx, "Reshape target shape is computed at run time and fixes a channel axis")
        fixed = sorted(a for a in axes if target[a] != -1)
        if fixed:
            # Concat(Shape(x)[:2], [heads, head_dim]): the channel entries are constant parts
            # of the Concat, which the fixup rewrites
            parts = _concat_parts(ctx, shape, fixed, node)
            if parts is None:
                return block(
                    ctx,
                    "Reshape target shape is computed at run time and fixes a channel axis "
                    "outside a constant part of its Concat",
                )
            facts.fixups.append(_concat_target_fixup(node.name, y, fixed, parts))
        return _with_copy(ctx, facts)
    if not reshape_facts(ctx, x, y, facts):
        return facts
    facts.fixups.append(_reshape_fixup(node.name, x, y, bool(ctx.attr("allowzero", 0))))
    return _with_copy(ctx, facts)


@rule("Flatten", "Squeeze", "Unsqueeze")
def flatten_like(node, ctx: RuleContext) -> OpFacts:
    """Reshapes whose attributes name axes, not sizes: nothing to rewrite."""
    x, y = ctx.input(0), ctx.output(0)
    facts = OpFacts()
    if not (ctx.slots(x) or ctx.slots(y)):
        return facts
    if node.op_type == "Squeeze":
        axes = ctx.attr("axes") if ctx.opset < 13 else ctx.const_ints(ctx.input(1))
        if axes is None and (ctx.opset < 13 or ctx.input(1) is None):
            # every size-1 axis goes: name them, so a channel pruned to 1 stays
            xs = ctx.shape(x)
            if xs is None or not all(isinstance(d, int) for d in xs):
                return block(ctx, "Squeeze without axes on a shape with unknown dims")
            facts.fixups.append(
                _squeeze_axes_fixup(node.name, [k for k, d in enumerate(xs) if d == 1], ctx.opset)
            )
    reshape_facts(ctx, x, y, facts)
    return _with_copy(ctx, facts)


def _squeeze_axes_fixup(node_name: str, axes: list[int], opset: int) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        if info.new_shape(node.inputs[0].name) == info.old_shape(node.inputs[0].name):
            return
        if any(a.name == "axes" for a in node.attributes.values()) or len(node.inputs) > 1:
            return
        if opset < 13:
            node.attributes["axes"] = ir.AttrInt64s("axes", axes)
        else:
            info.new_const(node, 1, np.asarray(axes, dtype=np.int64))

    return Fixup(node_name, "name the squeezed axes", apply)


@rule("Transpose")
def transpose(node, ctx: RuleContext) -> OpFacts:
    """Moves each channel slot per ``perm``. A composite slot whose axes the permutation
    separates ([B, T, H, d] -> [B, H, T, d]) collapses onto one of them: the heads (outer
    factor) or the head dim (inner factor), per the analysis' attention mode; the elements
    of the other factor are tied to it (METHODS.md §1.3, Reshape into heads)."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    perm = ctx.attr("perm") or list(range(r))[::-1]
    amap = {src: dst for dst, src in enumerate(perm)}
    facts = OpFacts()
    handled = split_composites(ctx, x, y, amap, facts)
    map_axes(RestrictedContext(ctx, handled), x, y, amap, facts)
    return _with_copy(ctx, facts)


def _expand_fixup(node_name: str, y: str) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        old, new = info.old_shape(y), info.new_shape(y)
        if tuple(old) == tuple(new):
            return
        target = [int(v) for v in np.asarray(info.const(node.inputs[1])).reshape(-1)]
        shift = len(new) - len(target)
        out = [int(new[k + shift]) if t != 1 and old[k + shift] != new[k + shift] else t for k, t in enumerate(target)]
        info.new_const(node, 1, np.asarray(out, dtype=np.int64))

    return Fixup(node_name, "rewrite the Expand target shape", apply)


@rule("Expand", opsets=(8, None))
def expand(node, ctx: RuleContext) -> OpFacts:
    """Broadcast to a target shape: axes the input already has at full size pass through; a
    channel axis created by the broadcast blocks."""
    x, shape, y = ctx.input(0), ctx.input(1), ctx.output(0)
    facts = OpFacts()
    if not (ctx.slots(x) or ctx.slots(y)):
        return facts
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None:
        return block(ctx, "shapes are unknown")
    shift = len(ys) - len(xs)
    amap = {a: a + shift for a in range(len(xs)) if xs[a] == ys[a + shift] and xs[a] != 1}
    what = "Expand broadcasts it: its copies share one input entry, as a K/V head read by several query heads does"
    if not map_axes(ctx, x, y, amap, facts, what=what):
        return facts
    if ctx.const(shape) is None:
        # repeat_kv with a dynamic batch: Concat(Shape(x)[:1], [kv_heads, n_rep], ...); target
        # entries of 1 keep the input's size by themselves
        target = ctx.view.partial_ints(shape)
        axes = {a for s in ctx.slots(y) for a in s.axes}
        shift = len(ys) - (len(target) if target is not None else 0)
        fixed = sorted(a for a in axes if target is not None and a - shift >= 0 and target[a - shift] != 1)
        parts = _concat_parts(ctx, shape, [a - shift for a in fixed], node) if target is not None else None
        if target is None or shift != 0 or (fixed and parts is None):
            return block(ctx, "Expand target shape is computed at run time")
        if fixed:
            facts.fixups.append(_concat_target_fixup(node.name, y, fixed, parts))
        return _with_copy(ctx, facts)
    facts.fixups.append(_expand_fixup(node.name, y))
    return _with_copy(ctx, facts)


def _fill_fixup(node_name: str, y: str) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        old, new = info.old_shape(y), info.new_shape(y)
        if tuple(old) != tuple(new):
            info.new_const(node, 0, np.asarray([int(d) for d in new], dtype=np.int64))

    return Fixup(node_name, "rewrite the ConstantOfShape shape", apply)


@rule("ConstantOfShape", opsets=(9, None))
def constant_of_shape(node, ctx: RuleContext) -> OpFacts:
    """A tensor filled with one value (an RNN's zero initial state sized from the batch): any
    of its channels can go, by rewriting the shape it is built from; a run-time shape must
    hold the channel entries as constant parts of its Concat."""
    shape, y = ctx.input(0), ctx.output(0)
    facts = OpFacts()
    slots = ctx.slots(y)
    axes = sorted({a for s in slots for a in s.axes})
    if not axes:
        return facts
    facts.links.extend(Link(s, s) for s in slots)  # a self-tie: the node joins the group
    fill = node.attributes.get("value")
    fill = 0.0 if fill is None else float(fill.value.numpy().reshape(-1)[0])
    # every element of a removed channel holds the fill value: readers see a known constant
    facts.transfer = lambda kappa: {s: np.full(ctx.slot_size(s), fill) for s in slots}
    if ctx.const(shape) is not None:
        facts.fixups.append(_fill_fixup(node.name, y))
        return facts
    target = ctx.view.partial_ints(shape)
    parts = None if target is None else _concat_parts(ctx, shape, axes, node)
    if parts is None:
        return block(
            ctx,
            "ConstantOfShape shape is computed at run time and fixes a channel axis outside a "
            "constant part of its Concat",
        )
    facts.fixups.append(_concat_target_fixup(node.name, y, axes, parts, index=0))
    return facts
