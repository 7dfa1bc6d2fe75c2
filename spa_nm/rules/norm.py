"""Normalizations. Per-channel ones (BatchNorm, InstanceNorm) pass channels through with their
scale, shift and statistics as member slices; GroupNorm removes whole groups of channels (the
others' statistics stay as they were) (METHODS.md §1.3). LayerNorm and RMSNorm over the last axis (a transformer's residual stream)
are *approximate*: blocked unless the analysis allows approximation, and so is LRN, which
divides each channel by its neighbours' energy."""

from __future__ import annotations

import numpy as np

import onnx_ir as ir

from spa_nm.facts import FixInfo, Fixup, Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import RestrictedContext, block, map_axes, unary_transfer
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _per_channel(ctx: RuleContext, roles: list[tuple[int, Role]]) -> OpFacts:
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    facts = OpFacts()
    for i, _ in roles:
        if ctx.input(i) is not None and not ctx.is_param(ctx.input(i)):
            return block(ctx, f"{ctx.node.op_type} input {i} is not a constant initializer")
    sy = Slot(y, (1,))
    if not map_axes(ctx, x, y, {a: a for a in range(r)}, facts):
        return facts
    if not any(s == Slot(x, (1,)) for s in ctx.slots(x)) and sy not in ctx.slots(y):
        # channel axis not (yet) known to be a channel: still declare it, norms are per-channel
        facts.links.append(_link(Slot(x, (1,)), sy))
    for s in ctx.slots(x) + ctx.slots(y):
        if 1 in s.axes and len(s.axes) != 1:
            return block(ctx, f"composite channel slot {s} through a norm")
    for i, role in roles:
        if ctx.input(i) is not None:
            facts.params.append(Param(ctx.input(i), 0, sy, role))
    facts.resets.append(sy)
    return facts


def _link(a: Slot, b: Slot):
    from spa_nm.facts import Link

    return Link(a, b)


@rule("BatchNormalization")
def batch_norm(node, ctx: RuleContext) -> OpFacts:
    """Inference-mode BN: γ, β, running mean and variance are slices of the channel."""
    if int(ctx.attr("training_mode", 0)) or any(
        o.uses() or o.is_graph_output() for o in node.outputs[1:]
    ):
        return block(ctx, "BatchNormalization in training mode")
    return _per_channel(
        ctx, [(1, Role.NORM_SCALE), (2, Role.NORM_SHIFT), (3, Role.NORM_STAT), (4, Role.NORM_STAT)]
    )


@rule("InstanceNormalization")
def instance_norm(node, ctx: RuleContext) -> OpFacts:
    """Statistics per (sample, channel): channels are independent."""
    return _per_channel(ctx, [(1, Role.NORM_SCALE), (2, Role.NORM_SHIFT)])


@rule("GroupNormalization", opsets=(18, None))
def group_norm(node, ctx: RuleContext) -> OpFacts:
    """Statistics per (sample, group of C/G channels): removing whole groups leaves the
    survivors' statistics unchanged, so each group is one unit (its channels are tied) and
    ``num_groups`` is rewritten. Scale and shift are per channel (opset 21) or per group
    (opset 18), members either way."""
    x, y = ctx.input(0), ctx.output(0)
    xs = ctx.shape(x)
    groups = int(ctx.attr("num_groups", 0))
    if xs is None or len(xs) < 2:
        return block(ctx, "input rank is unknown")
    c = xs[1]
    if not isinstance(c, int) or groups <= 0 or c % groups:
        return block(ctx, f"GroupNormalization with {c} channels in {groups} groups")
    per = c // groups
    for i in (1, 2):
        if not ctx.is_param(ctx.input(i)):
            return block(ctx, f"GroupNormalization input {i} is not a constant initializer")
    facts = OpFacts()
    sx, sy = Slot(x, (1,)), Slot(y, (1,))
    if not map_axes(ctx, x, y, {a: a for a in range(len(xs))}, facts):
        return facts
    for s in ctx.slots(x) + ctx.slots(y):
        if 1 in s.axes and len(s.axes) != 1:
            return block(ctx, f"composite channel slot {s} through a norm")
    if sx not in ctx.slots(x) and sy not in ctx.slots(y):
        facts.links.append(_link(sx, sy))
    if per > 1:  # every channel of a group goes with the group's first channel
        first = np.arange(c) // per * per
        facts.links.append(Link(sx, sx, np.arange(c), first))
    for i, role in ((1, Role.NORM_SCALE), (2, Role.NORM_SHIFT)):
        n = ctx.shape(ctx.input(i))
        if n == (c,):
            facts.params.append(Param(ctx.input(i), 0, sy, role))
        elif n == (groups,):
            facts.params.append(Param(ctx.input(i), 0, sy, role, np.arange(groups) * per))
        else:
            return block(ctx, f"GroupNormalization input {i} has shape {n}")
    facts.resets.append(sy)
    facts.fixups.append(_num_groups_fixup(node.name, y, per))
    return facts


def _num_groups_fixup(node_name: str, y: str, per: int) -> Fixup:
    def apply(node, info: FixInfo) -> None:
        node.attributes["num_groups"] = ir.AttrInt64("num_groups", int(info.new_shape(y)[1]) // per)

    return Fixup(node_name, "rewrite num_groups", apply)


@rule("LayerNormalization")
def layer_norm(node, ctx: RuleContext) -> OpFacts:
    """Axes before ``axis`` pass through. Removing channels of the one normalized axis (the
    residual stream of a transformer) changes the mean and variance every other channel is
    normalized with: approximate, so the channels pass through with γ and β as members and the
    analysis allows it only when asked (METHODS.md §1.3, LayerNorm row)."""
    return _normalization(ctx, [(1, Role.NORM_SCALE), (2, Role.NORM_SHIFT)], "the mean and variance")


@rule("RMSNormalization", opsets=(23, None))
def rms_norm(node, ctx: RuleContext) -> OpFacts:
    """Like LayerNormalization, with a root mean square and a scale only."""
    return _normalization(ctx, [(1, Role.NORM_SCALE)], "the root mean square")


def _normalization(ctx: RuleContext, roles: list[tuple[int, Role]], stats: str) -> OpFacts:
    x, y = ctx.input(0), ctx.output(0)
    op = ctx.node.op_type
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    axis = ctx.axis(x, int(ctx.attr("axis", -1)))
    facts = OpFacts()
    last = Slot(x, (r - 1,))
    for s in ctx.slots(x) + ctx.slots(y):
        if not any(a >= axis for a in s.axes):
            continue
        if axis != r - 1 or s.axes != (r - 1,):
            return block(
                ctx,
                f"{op} normalizes over channel slot {s} and other axes: removing channels "
                "changes the statistics",
            )
        if any(o.uses() or o.is_graph_output() for o in ctx.node.outputs[1:]):
            return block(ctx, f"{op} statistics outputs are used")
        for i, _ in roles:
            v = ctx.input(i)
            if v is not None and not (ctx.is_param(v) and ctx.shape(v) == (ctx.shape(x)[-1],)):
                return block(ctx, f"{op} input {i} is not a per-channel constant")
        facts.approximate.append(
            block(
                ctx,
                f"{op} normalizes over channel slot {s}: removing channels changes {stats}",
                (x, y),
            )
        )
        sy = Slot(y, (r - 1,))
        facts.links.append(_link(last, sy))
        for i, role in roles:
            if ctx.input(i) is not None:
                facts.params.append(Param(ctx.input(i), 0, sy, role))
        facts.resets.append(sy)
        break
    map_axes(RestrictedContext(ctx, {x: {last}, y: {Slot(y, (r - 1,))}}), x, y, {a: a for a in range(axis)}, facts)
    return facts


@rule("LRN")
def lrn(node, ctx: RuleContext) -> OpFacts:
    """Local response normalization (AlexNet, GoogLeNet): channel ``c`` is divided by
    ``(bias + alpha/size · Σ x²)^beta`` over the ``size`` channels around it. Removing a
    channel changes the sums of its neighbours, so pruning the channel axis is *approximate*
    (METHODS.md §1.3, the LayerNorm row's treatment: blocked unless allowed, then reported with
    its measured error). Other axes pass through. A zeroed channel stays 0 (0 divided by a
    positive denominator); any other constant does not survive."""
    x, y = ctx.input(0), ctx.output(0)
    facts = OpFacts()
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown") if ctx.slots(x) or ctx.slots(y) else facts
    for s in ctx.slots(x) + ctx.slots(y):
        if 1 not in s.axes:
            continue
        if s.axes != (1,):
            return block(ctx, f"LRN normalizes over channel slot {s} and other axes")
        facts.approximate.append(
            block(
                ctx,
                f"LRN normalizes each channel of slot {s} by its neighbours: removing channels "
                "changes them",
                (x, y),
            )
        )
        break
    if not map_axes(ctx, x, y, {a: a for a in range(r)}, facts):
        return facts
    facts.transfer = unary_transfer(
        facts.links, lambda s: ctx.slot_size(s), lambda v: np.where(v == 0, 0.0, np.nan)
    )
    return facts
