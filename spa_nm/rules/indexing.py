"""Indexing and selection ops: TopK, ArgMax/ArgMin, GatherND, ScatterElements, ScatterND,
NonZero, Range (METHODS.md §1.3).

Each one passes the channel axes it does not index through unchanged and blocks a channel on
an axis it selects along (which elements survive would depend on the channel's values). Ops
whose outputs cannot carry a channel (Range's positions) or whose output size depends on every
value (NonZero) carry none: with no channel on their values they are neutral, so a position
computation no longer blocks the groups around it.
"""

from __future__ import annotations

import numpy as np

from spa_nm.facts import OpFacts, Param, Role
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block, copy_transfer, map_axes, unary_transfer
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _channel_axes(ctx: RuleContext, *values: str | None) -> set[int]:
    return {a for v in values for s in ctx.slots(v) for a in s.axes}


@rule("Range")
def range_(node, ctx: RuleContext) -> OpFacts:
    """A 1-D run of positions from scalars: no channel enters or leaves it."""
    if _channel_axes(ctx, ctx.output(0)):
        return block(ctx, "Range's positions cannot carry a channel")
    return OpFacts()


@rule("NonZero")
def nonzero(node, ctx: RuleContext) -> OpFacts:
    """Coordinates of the non-zero elements: their count depends on every channel."""
    if _channel_axes(ctx, ctx.input(0), ctx.output(0)):
        return block(ctx, "NonZero's output size depends on every channel's values")
    return OpFacts()


@rule("TopK", opsets=(10, None))
def topk(node, ctx: RuleContext) -> OpFacts:
    """The k largest along ``axis``: the other axes pass through to values and indices."""
    x, values, indices = ctx.input(0), ctx.output(0), ctx.output(1)
    r = ctx.rank(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    axis = ctx.axis(x, int(ctx.attr("axis", -1)))
    if axis in _channel_axes(ctx, x, values, indices):
        return block(ctx, f"TopK selects along channel axis {axis}")
    amap = {a: a for a in range(r) if a != axis}
    facts = OpFacts()
    if not map_axes(ctx, x, values, amap, facts):
        return facts
    value_links = list(facts.links)
    if indices is not None and not map_axes(ctx, x, indices, amap, facts):
        return facts
    # a zeroed channel's top k are zeros; its indices (ties) are not a constant we claim
    facts.transfer = copy_transfer(value_links, lambda s: ctx.slot_size(s))
    return facts


@rule("ArgMax", "ArgMin")
def arg_extreme(node, ctx: RuleContext) -> OpFacts:
    """The index of the extreme along ``axis`` (kept as size 1 or dropped): the other axes
    pass through. A zeroed channel's row is constant, so its index is the first (or, with
    ``select_last_index``, the last) position: a known constant."""
    x, y = ctx.input(0), ctx.output(0)
    r, xs = ctx.rank(x), ctx.shape(x)
    if r is None:
        return block(ctx, "input rank is unknown")
    axis = ctx.axis(x, int(ctx.attr("axis", 0)))
    if axis in _channel_axes(ctx, x):
        return block(ctx, f"{node.op_type} selects along channel axis {axis}")
    keep = int(ctx.attr("keepdims", 1))
    amap = {a: (a if a < axis or keep else a - 1) for a in range(r) if a != axis}
    facts = OpFacts()
    if not map_axes(ctx, x, y, amap, facts):
        return facts
    n = xs[axis]
    last = int(ctx.attr("select_last_index", 0))
    if last and not isinstance(n, int):
        return facts  # no constant claimed: consumers that need one block
    first_or_last = float(n - 1) if last else 0.0
    facts.transfer = unary_transfer(
        facts.links, lambda s: ctx.slot_size(s), lambda v: np.where(np.isnan(v), np.nan, first_or_last)
    )
    return facts


@rule("GatherND", opsets=(11, None))
def gather_nd(node, ctx: RuleContext) -> OpFacts:
    """``out = indices.shape[:-1] + data.shape[b + m:]``: the batch axes and the trailing
    (not indexed) axes of ``data`` pass through; a channel on an indexed axis blocks."""
    data, idx, y = ctx.input(0), ctx.input(1), ctx.output(0)
    ri, r, si = ctx.rank(idx), ctx.rank(data), ctx.shape(idx)
    if r is None or ri is None or si is None or not isinstance(si[-1], int):
        if _channel_axes(ctx, data, idx, y):
            return block(ctx, "shapes are unknown")
        return OpFacts()
    b, m = int(ctx.attr("batch_dims", 0)), int(si[-1])
    if _channel_axes(ctx, idx) or any(b <= a < b + m for a in _channel_axes(ctx, data)):
        return block(ctx, "GatherND indexes a channel axis")
    amap = {a: a for a in range(b)} | {a: ri - 1 + a - (b + m) for a in range(b + m, r)}
    facts = OpFacts()
    if ctx.is_param(data):
        return block(ctx, "GatherND of a constant table")
    map_axes(ctx, data, y, amap, facts, what="GatherND indexes it")
    facts.transfer = copy_transfer(facts.links, lambda s: ctx.slot_size(s))
    return facts


@rule("ScatterElements", opsets=(11, None))
def scatter_elements(node, ctx: RuleContext) -> OpFacts:
    """``data``, ``indices``, ``updates`` and the output share every axis; elements move only
    along ``axis``. A channel on another axis passes through all four (a constant ``indices``
    or ``updates`` tensor is sliced with it); on ``axis`` it blocks."""
    data, idx, upd, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    r = ctx.rank(data)
    if r is None:
        return block(ctx, "input rank is unknown")
    axis = ctx.axis(data, int(ctx.attr("axis", 0)))
    if axis in _channel_axes(ctx, data, idx, upd, y):
        return block(ctx, f"{node.op_type} scatters along channel axis {axis}")
    return _scatter_through(ctx, data, [idx, upd], y, {a: a for a in range(r) if a != axis})


@rule("ScatterND", opsets=(11, None))
def scatter_nd(node, ctx: RuleContext) -> OpFacts:
    """``updates.shape = indices.shape[:-1] + data.shape[m:]``: the trailing (not indexed)
    axes of ``data`` are the trailing axes of ``updates`` and pass through."""
    data, idx, upd, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    r, ri, si = ctx.rank(data), ctx.rank(idx), ctx.shape(idx)
    if r is None or ri is None or si is None or not isinstance(si[-1], int):
        return block(ctx, "shapes are unknown")
    m = int(si[-1])
    if _channel_axes(ctx, idx) or any(a < m for a in _channel_axes(ctx, data, y)):
        return block(ctx, "ScatterND indexes a channel axis")
    if any(a < ri - 1 for a in _channel_axes(ctx, upd)):
        return block(ctx, "ScatterND updates carry a channel on an indexed axis")
    facts = OpFacts()
    if not map_axes(ctx, data, y, {a: a for a in range(r)}, facts):
        return facts
    _member_or_link(ctx, upd, y, {ri - 1 + a - m: a for a in range(m, r)}, facts)
    return _with_both_sources(ctx, facts, data, upd)


def _scatter_through(ctx: RuleContext, data, others, y, amap) -> OpFacts:
    facts = OpFacts()
    ident = {a: a for a in range(ctx.rank(data))}
    if not map_axes(ctx, data, y, ident, facts):
        return facts
    for v in others:
        _member_or_link(ctx, v, y, amap, facts)
        if facts.blocked:
            return facts
    return _with_both_sources(ctx, facts, data, others[-1])


def _member_or_link(ctx: RuleContext, v: str, y: str, amap: dict[int, int], facts: OpFacts) -> None:
    """``v``'s axes in ``amap`` follow ``y``'s channels: a constant is sliced with them, an
    activation is linked."""
    if ctx.is_param(v):
        inverse = {dst: src for src, dst in amap.items()}
        vs = ctx.shape(v)
        for s in ctx.slots(y):
            if len(s.axes) != 1 or s.axes[0] not in inverse:
                facts.blocked.append(block(ctx, f"channel slot {s} is not an axis of {v}"))
                return
            a = inverse[s.axes[0]]
            if vs is None or vs[a] != ctx.shape(y)[s.axes[0]]:
                facts.blocked.append(block(ctx, f"{v} broadcasts along channel slot {s}"))
                return
            facts.params.append(Param(v, a, s, Role.OTHER))
        return
    if ctx.const(v) is not None:
        if any(ctx.slots(y)):
            facts.blocked.append(block(ctx, f"{v} is a constant that is not an initializer"))
        return
    map_axes(ctx, v, y, amap, facts)


def _with_both_sources(ctx: RuleContext, facts: OpFacts, data: str, upd: str) -> OpFacts:
    """A zeroed channel of the output is a known constant only where data and updates carry
    the same one (a member ``updates`` slice is zeroed with its channel)."""
    size = lambda s: ctx.slot_size(s)  # noqa: E731
    data_links = [ln for ln in facts.links if ln.a.value == data or ln.b.value == data]
    upd_links = [ln for ln in facts.links if ln.a.value == upd or ln.b.value == upd]
    from_data = copy_transfer(data_links, size)
    from_upd = copy_transfer(upd_links, size)
    member = {p.slot for p in facts.params if p.name == upd}

    def transfer(kappa):
        a, b = from_data(kappa), from_upd(kappa)
        out = {}
        for s, k in a.items():
            if s in member:
                out[s] = np.where(k == 0, 0.0, np.nan)
            elif s in b:
                out[s] = np.where(k == b[s], k, np.nan)
            else:
                out[s] = np.full_like(k, np.nan)
        return out

    facts.transfer = transfer
    return facts
