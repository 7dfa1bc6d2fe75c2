"""Conv and ConvTranspose: the cut points of channel groups (METHODS.md §1.2, §1.3).

Conv W is [C_out, C_in/g, k...]: rows die with output channels, columns with input channels.
- g = 1: input and output are separate groups.
- depthwise (g = C_in, C_out = m·C_in): output o is computed from input o // m only, so they
  share a unit; ``group`` is rewritten to the new C_in.
- grouped (1 < g < C_in): input j of every conv-group is tied (the same index is removed from
  each group, keeping C_in/g integral), likewise outputs; ``group`` stays.
"""

from __future__ import annotations

import math

import numpy as np

import onnx_ir as ir
from spa_nm.facts import FixInfo, Fixup, Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _conv_macs(node, ctx: RuleContext) -> int:
    ys, ws = ctx.shape(ctx.output(0)), ctx.shape(ctx.input(1))
    if ys is None or ws is None or not all(isinstance(d, int) for d in (*ys, *ws)):
        return 0
    return math.prod(ys) * math.prod(ws[1:])


def _convt_macs(node, ctx: RuleContext) -> int:
    xs, ws = ctx.shape(ctx.input(0)), ctx.shape(ctx.input(1))
    if xs is None or ws is None or not all(isinstance(d, int) for d in (*xs, *ws)):
        return 0
    return math.prod(xs) * math.prod(ws[1:])


def _tie_groups(slot: Slot, groups: int, per: int) -> Link:
    """Tie element i·per + j to element j for every conv-group i >= 1."""
    j = np.tile(np.arange(per), groups - 1)
    e = np.arange(per, groups * per)
    return Link(slot, slot, j, e)


def _group_fixup(node_name: str, x: str) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        new = info.new_shape(x)
        node.attributes["group"] = ir.AttrInt64("group", int(new[1]))

    return Fixup(node_name, "rewrite group of a depthwise conv", apply)


def _pads_zero(ctx: RuleContext) -> bool:
    auto = ctx.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        ws = ctx.shape(ctx.input(1))
        return ws is not None and all(k == 1 for k in ws[2:])
    return all(p == 0 for p in (ctx.attr("pads") or []))


def _conv_nm(node, ctx: RuleContext):
    """W [C_out, C_in/g, k...]: blocks run along C_in/g at each (out, k...) (METHODS.md §2.1)."""
    return (1, 1)


def _convt_nm(node, ctx: RuleContext):
    """W [C_in, C_out/g, k...]: each output sums over C_in, axis 0."""
    return (1, 0)


@rule("Conv", macs=_conv_macs, nm_axis=_conv_nm)
def conv(node, ctx: RuleContext) -> OpFacts:
    x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    ws, xs = ctx.shape(w), ctx.shape(x)
    if not ctx.is_param(w):
        return block(ctx, "Conv weight is not a constant initializer")
    if b is not None and not ctx.is_param(b):
        return block(ctx, "Conv bias is not a constant initializer")
    if xs is None or not isinstance(xs[1], int):
        return block(ctx, "input channel count is unknown")
    g = int(ctx.attr("group", 1))
    c_in, c_out = xs[1], ws[0]
    facts = OpFacts()
    sx, sy = Slot(x, (1,)), Slot(y, (1,))
    facts.params.append(Param(w, 0, sy, Role.WEIGHT_OUT))
    if b is not None:
        facts.params.append(Param(b, 0, sy, Role.BIAS))
    facts.resets.append(sy)
    for s in (*ctx.slots(x), *ctx.slots(y)):
        if s.axes != (1,):
            return block(ctx, f"Conv does not carry channel slot {s}")
    if g == 1:
        facts.params.append(Param(w, 1, sx, Role.WEIGHT_IN))
        if _pads_zero(ctx):
            facts.folds[sx] = _conv_fold(w, b, y, 1, c_in)
    elif g == c_in:
        m = c_out // c_in
        facts.links.append(Link(sx, sy, np.arange(c_out) // m, np.arange(c_out)))
        facts.fixups.append(_group_fixup(node.name, x))
    else:
        facts.links.append(_tie_groups(sx, g, c_in // g))
        facts.links.append(_tie_groups(sy, g, c_out // g))
        facts.params.append(Param(w, 1, sx, Role.WEIGHT_IN, np.arange(c_in // g)))
        if _pads_zero(ctx):
            facts.folds[sx] = _conv_fold(w, b, y, g, c_in)
    return facts


def _conv_fold(w: str, b: str | None, y: str, g: int, c_in: int):
    """Fold constant input channels into the bias: b[o] += Σ_c κ_c Σ_uv W[o, c, u, v] (exact
    without padding, METHODS.md §1.4)."""

    def fold(node: ir.Node, removed: np.ndarray, kappa: np.ndarray, consts) -> None:
        wt = consts.get(w)
        per = c_in // g
        c_out = wt.shape[0]
        k = np.where(removed, kappa, 0.0).reshape(g, per)  # [group, j]
        tap = wt.reshape(c_out, per, -1).sum(axis=2)  # [o, j]
        grp = np.arange(c_out) // (c_out // g)
        delta = (tap * k[grp]).sum(axis=1).astype(wt.dtype)
        consts.add_bias(node, 2, b, delta)

    return fold


def _convt_group_fixup(node_name: str, x: str) -> Fixup:
    return _group_fixup(node_name, x)


@rule("ConvTranspose", macs=_convt_macs, nm_axis=_convt_nm)
def conv_transpose(node, ctx: RuleContext) -> OpFacts:
    """W is [C_in, C_out/g, k...]: axis 0 follows the input, axis 1 the output (per group)."""
    x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    ws, xs = ctx.shape(w), ctx.shape(x)
    if not ctx.is_param(w):
        return block(ctx, "ConvTranspose weight is not a constant initializer")
    if b is not None and not ctx.is_param(b):
        return block(ctx, "ConvTranspose bias is not a constant initializer")
    if ctx.attr("output_shape") is not None and len(ctx.attr("output_shape")) > len(ws) - 2:
        return block(ctx, "output_shape attribute fixes the channel count")
    g = int(ctx.attr("group", 1))
    c_in = ws[0]
    m = ws[1]
    facts = OpFacts()
    sx, sy = Slot(x, (1,)), Slot(y, (1,))
    for s in (*ctx.slots(x), *ctx.slots(y)):
        if s.axes != (1,):
            return block(ctx, f"ConvTranspose does not carry channel slot {s}")
    if b is not None:
        facts.params.append(Param(b, 0, sy, Role.BIAS))
    facts.resets.append(sy)
    if g == 1:
        facts.params.append(Param(w, 1, sy, Role.WEIGHT_OUT))
        facts.params.append(Param(w, 0, sx, Role.WEIGHT_IN))
    elif g == c_in:
        c_out = g * m
        facts.links.append(Link(sx, sy, np.arange(c_out) // m, np.arange(c_out)))
        facts.params.append(Param(w, 0, sx, Role.WEIGHT_OUT))
        facts.fixups.append(_convt_group_fixup(node.name, x))
    else:
        return block(ctx, f"grouped ConvTranspose (group={g}) is not supported")
    del xs
    return facts
