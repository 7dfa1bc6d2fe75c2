"""Building blocks that several rule families share.

Nothing here branches on an op type: these are the algebra of axes (pass-through maps, reshape
dim groups) and of the constants a zeroed channel carries (METHODS.md §1.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spa_nm.facts import Blocked, Link, OpFacts, Slot
from spa_nm.rules._context import MAX_SLOT_ELEMENTS, RuleContext

__all__ = [
    "RestrictedContext",
    "block",
    "copy_transfer",
    "map_axes",
    "passthrough",
    "reshape_facts",
    "split_composites",
    "unary_transfer",
]


def block(ctx: RuleContext, reason: str, values: tuple[str | None, ...] | None = None) -> Blocked:
    """Block the node's channels: ``values`` (default: all its inputs and outputs)."""
    node = ctx.node
    if values is None:
        values = tuple(v.name for v in node.inputs if v is not None) + tuple(
            v.name for v in node.outputs
        )
    return Blocked(node.name or "", node.op_type, reason, tuple(v for v in values if v))


def map_axes(
    ctx: RuleContext,
    x: str,
    y: str,
    axis_map: Mapping[int, int],
    facts: OpFacts,
    what: str = "this axis",
) -> bool:
    """Link every known slot of ``x`` to ``y`` (and back) through ``axis_map`` (x axis -> y axis).

    Slots whose axes are not all mapped, or map to non-contiguous axes, block the node and
    return False. Reordered composite axes become a permutation link.
    """
    inverse = {v: k for k, v in axis_map.items()}
    seen: set[tuple[Slot, Slot]] = set()
    for side, slots in (("in", ctx.slots(x)), ("out", ctx.slots(y))):
        for s in slots:
            amap = axis_map if side == "in" else inverse
            if any(a not in amap for a in s.axes):
                facts.blocked.append(
                    block(ctx, f"{ctx.node.op_type} does not carry channel axis {s} ({what})")
                )
                return False
            mapped = [amap[a] for a in s.axes]
            srt = sorted(mapped)
            if srt != list(range(srt[0], srt[0] + len(srt))):
                facts.blocked.append(
                    block(ctx, f"{ctx.node.op_type} scatters the axes of channel slot {s}")
                )
                return False
            other = Slot(y if side == "in" else x, tuple(srt))
            a, b = (s, other) if side == "in" else (other, s)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            if len(s.axes) == 1 or mapped == srt:
                facts.links.append(Link(a, b))
            else:
                # composite slot whose axes are reordered: a permutation of the flat index
                src_shape = [ctx.shape(s.value)[ax] for ax in s.axes]
                n = math.prod(src_shape)
                order = [sorted(mapped).index(m) for m in mapped]  # src pos -> dst pos
                dst_shape = [0] * len(order)
                for i, p in enumerate(order):
                    dst_shape[p] = src_shape[i]
                grid = np.arange(n).reshape(src_shape)
                dst_flat = np.transpose(grid, np.argsort(order)).reshape(-1)
                # dst element k holds src element dst_flat[k]
                src_idx, dst_idx = dst_flat, np.arange(n)
                if side == "in":
                    facts.links.append(Link(a, b, src_idx, dst_idx))
                else:
                    facts.links.append(Link(a, b, dst_idx, src_idx))
    return True


class RestrictedContext:
    """A read-only context that hides some slots (``exclude``: value -> slots) from helpers
    such as `map_axes`, for rules that link those slots themselves."""

    def __init__(self, ctx: RuleContext, exclude: Mapping[str, set[Slot]]) -> None:
        self._ctx = ctx
        self._exclude = exclude

    def slots(self, value: str | None) -> list[Slot]:
        return [s for s in self._ctx.slots(value) if s not in self._exclude.get(value or "", set())]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def split_composites(
    ctx: RuleContext, x: str, y: str, axis_map: Mapping[int, int], facts: OpFacts
) -> dict[str, set[Slot]]:
    """Composite slots whose axes ``axis_map`` (x axis -> y axis) separates collapse onto one
    axis on the other side: the outer factor in ``"heads"`` mode (each element (h, j) tied to
    h: whole heads), the inner one in ``"head_dim"`` mode (tied to j: the same index in every
    head). Returns the slots handled, per value, for the caller to hide from `map_axes`."""
    inverse = {v: k for k, v in axis_map.items()}
    handled: dict[str, set[Slot]] = {x: set(), y: set()}
    for value, other, amap in ((x, y, axis_map), (y, x, inverse)):
        for s in ctx.slots(value):
            if len(s.axes) < 2 or any(a not in amap for a in s.axes):
                continue
            mapped = sorted(amap[a] for a in s.axes)
            if mapped == list(range(mapped[0], mapped[0] + len(mapped))):
                continue  # the axes stay together: map_axes moves the slot as a whole
            shape = ctx.shape(value)
            dims = [shape[a] for a in s.axes]
            if not all(isinstance(d, int) for d in dims):
                continue
            k = 0 if getattr(ctx.view, "attention", "heads") == "heads" else len(dims) - 1
            digit = np.indices(dims)[k].reshape(-1)
            t = Slot(other, (amap[s.axes[k]],))
            if value == x:
                facts.links.append(Link(s, t, None, digit))
            else:
                facts.links.append(Link(t, s, digit, None))
            handled[value].add(s)
            handled[other].add(t)
    return handled


def passthrough(
    ctx: RuleContext,
    x: str,
    y: str,
    axes: range | list[int] | None = None,
    facts: OpFacts | None = None,
) -> OpFacts:
    """Identity on ``axes`` (default all) from x to y; channel slots elsewhere block."""
    facts = facts if facts is not None else OpFacts()
    r = ctx.rank(x)
    if r is None or ctx.rank(y) != r:
        if ctx.slots(x) or ctx.slots(y):
            facts.blocked.append(block(ctx, "shapes are unknown"))
        return facts
    axes = range(r) if axes is None else axes
    map_axes(ctx, x, y, {a: a for a in axes}, facts)
    return facts


# -- constants carried by zeroed channels (METHODS.md §1.4) -------------------------------


def _size_or_none(sizes: Callable[[Slot], int], s: Slot) -> int | None:
    try:
        return sizes(s)
    except ValueError:  # the size function's word for a dim of unknown size
        return None


def _link_pairs(
    links: list[Link], sizes: Callable[[Slot], int]
) -> list[tuple[Link, np.ndarray, np.ndarray]]:
    out = []
    for ln in links:
        na = _size_or_none(sizes, ln.a) if ln.a_idx is None else None
        nb = _size_or_none(sizes, ln.b) if ln.b_idx is None else None
        if (ln.a_idx is None and na is None) or (ln.b_idx is None and nb is None):
            # a slot on a dim of unknown size carries no known constant (the analysis
            # blocks it for its size anyway)
            continue
        a_idx = np.arange(na) if ln.a_idx is None else ln.a_idx
        b_idx = np.arange(nb) if ln.b_idx is None else ln.b_idx
        out.append((ln, a_idx, b_idx))
    return out


def unary_transfer(
    links: list[Link], sizes: Callable[[Slot], int], fn: Callable[[np.ndarray], np.ndarray]
) -> Callable[[Mapping[Slot, np.ndarray]], dict[Slot, np.ndarray]]:
    """Output constant = fn(input constant), carried along the node's links."""
    pairs = _link_pairs([ln for ln in links if ln.a != ln.b], sizes)

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        out: dict[Slot, np.ndarray] = {}
        for ln, a_idx, b_idx in pairs:
            src = kappa.get(ln.a)
            dst = out.setdefault(ln.b, np.full(sizes(ln.b), np.nan))
            if src is not None:
                with np.errstate(all="ignore"):
                    vals = np.asarray(fn(src[a_idx]), dtype=float)
                    dst[b_idx] = vals
                    if np.unique(b_idx).size != b_idx.size:
                        # several sources per element (a head collapsed onto its index): a
                        # constant only where they all agree
                        lo = np.full(dst.shape, np.inf)
                        hi = np.full(dst.shape, -np.inf)
                        np.minimum.at(lo, b_idx, vals)
                        np.maximum.at(hi, b_idx, vals)
                        bad = np.zeros(dst.shape, dtype=bool)
                        bad[b_idx] = ~(lo[b_idx] == hi[b_idx])
                        dst[bad] = np.nan
        return out

    return transfer


def copy_transfer(
    links: list[Link], sizes: Callable[[Slot], int]
) -> Callable[[Mapping[Slot, np.ndarray]], dict[Slot, np.ndarray]]:
    """Structural ops move values without changing them."""
    return unary_transfer(links, sizes, lambda v: v)


# -- reshape algebra ------------------------------------------------------------------------


def dim_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair contiguous runs of ``a`` and ``b`` with equal products; None if impossible.

    Size-1 dims pair with nothing unless both sides have one.
    """
    i = j = 0
    groups: list[tuple[list[int], list[int]]] = []
    while i < len(a) or j < len(b):
        a1 = i < len(a) and a[i] == 1
        b1 = j < len(b) and b[j] == 1
        if a1 and not b1:
            groups.append(([i], []))
            i += 1
            continue
        if b1 and not a1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return None
        ia, jb, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                ia.append(i)
                pa *= a[i]
                i += 1
            else:
                if j >= len(b):
                    return None
                jb.append(j)
                pb *= b[j]
                j += 1
        groups.append((ia, jb))
    return groups


def reshape_facts(ctx: RuleContext, x: str, y: str, facts: OpFacts) -> bool:
    """Link channel slots through a reshape of ``x`` into ``y`` (METHODS.md §1.3).

    - a run of dims kept as is: identity;
    - one channel slot merged with non-channel dims (Flatten into Gemm): every merged element
      is tied to its channel digit;
    - a composite slot merged back into one axis: identity on the flat index;
    - one channel axis split into several (channel shuffle, heads): a composite slot on the
      output, identity on the flat index; the graph keeps it rectangular (whole heads where a
      Transpose or MatMul ties them, else the same inner indices in every leading factor).
    Anything else blocks.
    """
    xs, ys = ctx.shape(x), ctx.shape(y)
    in_slots, out_slots = ctx.slots(x), ctx.slots(y)
    if not in_slots and not out_slots:
        return True
    groups = None
    if xs is None or ys is None or not all(isinstance(d, int) for d in (*xs, *ys)):
        # symbolic dims (a dynamic batch) are fine where they map one to one
        xs2, ys2 = _strip_common_symbolic(xs, ys)
        if xs2 is None:
            # a dynamic batch and sequence: equal leading and trailing dims map one to one,
            # the symbolic run between them ([B, T] <-> [B*T]) must carry no channel
            groups = _symbolic_groups(xs, ys)
            if groups is None or any(
                (set(gi) & {a for s in in_slots for a in s.axes})
                or (set(go) & {a for s in out_slots for a in s.axes})
                for gi, go, opaque in groups
                if opaque
            ):
                facts.blocked.append(block(ctx, "reshape of a channel axis with unknown dims"))
                return False
            groups = [(gi, go) for gi, go, opaque in groups if not opaque]
        else:
            xs_, ys_, off_x, off_y = xs2
    else:
        xs_, ys_, off_x, off_y = list(xs), list(ys), 0, 0
    if groups is None:
        groups = dim_groups(xs_, ys_)
        if groups is None:
            facts.blocked.append(block(ctx, "cannot match reshape dims"))
            return False
        groups = [([k + off_x for k in gi], [k + off_y for k in go]) for gi, go in groups]
    # a composite slot whose axes fall in different dim groups (an Unsqueeze between heads and
    # head_dim) is separated as by a Transpose: it collapses onto one of its axes
    one_to_one = {gi[0]: go[0] for gi, go in groups if len(gi) == 1 and len(go) == 1}
    apart = {
        s
        for s in in_slots
        if len(s.axes) > 1 and len({i for i, (gi, _) in enumerate(groups) if set(gi) & set(s.axes)}) > 1
    } | {
        s
        for s in out_slots
        if len(s.axes) > 1 and len({i for i, (_, go) in enumerate(groups) if set(go) & set(s.axes)}) > 1
    }
    if apart:
        amap = dict(one_to_one)
        if any(a not in (amap if s.value == x else amap.values()) for s in apart for a in s.axes):
            facts.blocked.append(block(ctx, "reshape splits a composite channel slot"))
            return False
        handled = split_composites(RestrictedContext(ctx, {}), x, y, amap, facts)
        # the others keep their axes together (an identity reshape): moved as a whole
        whole = apart - handled[x] - handled[y]
        if whole:
            others = {v: {s for s in ctx.slots(v) if s not in whole} for v in (x, y)}
            if not map_axes(RestrictedContext(ctx, others), x, y, amap, facts):
                return False
        in_slots = [s for s in in_slots if s not in handled[x] and s not in whole]
        out_slots = [s for s in out_slots if s not in handled[y] and s not in whole]
    for gi, go in groups:
        cin = [s for s in in_slots if set(s.axes) & set(gi)]
        cout = [s for s in out_slots if set(s.axes) & set(go)]
        if not cin and not cout:
            continue
        if not gi or not go:
            if all(_one_element(ctx, s) for s in cin + cout):
                # a channel space of one element (a 1-channel Conv's input) can never lose
                # it: nothing to link, nothing to rewrite, and nothing else to block
                continue
            facts.blocked.append(block(ctx, "channel slot on a size-1 dim"))
            return False
        if not all(isinstance(xs[k], int) for k in gi) or not all(isinstance(ys[k], int) for k in go):
            facts.blocked.append(block(ctx, "reshape of a channel axis with unknown dims"))
            return False
        if not _group_links(ctx, x, y, gi, go, cin, cout, facts):
            return False
    return True


def _one_element(ctx: RuleContext, s: Slot) -> bool:
    shape = ctx.shape(s.value)
    return shape is not None and all(a < len(shape) and shape[a] == 1 for a in s.axes)


def _aligned_split(
    xs, ys, x: str, y: str, gi: list[int], go: list[int], s_in: Slot | None, s_out: Slot | None
) -> Link | None:
    """A channel axis leading a reshaped run whose other side leads with an axis of whole
    channels, or of parts of one channel: ``[C, H, W] <-> [G, C/G·H·W]`` (GroupNorm as the
    legacy exporter writes it: Reshape, InstanceNorm per group, Reshape back). Each leading
    index of the coarser side owns a block of the finer side's indices; the link ties each
    block to its index, so whole blocks go and the trailing run keeps its size. None when the
    run is not of that form (the caller's general rules apply)."""
    if len(gi) < 2 or len(go) < 2 or (s_in is None and s_out is None):
        return None
    if (s_in is not None and s_in.axes != (gi[0],)) or (s_out is not None and s_out.axes != (go[0],)):
        return None
    ca, cb = xs[gi[0]], ys[go[0]]
    st_in = math.prod(xs[k] for k in gi[1:])
    st_out = math.prod(ys[k] for k in go[1:])
    if ca == cb or ca * st_in != cb * st_out or min(ca, cb) < 2:
        return None
    a, b = Slot(x, (gi[0],)), Slot(y, (go[0],))
    if ca > cb and ca % cb == 0 and st_out % st_in == 0:  # each output index: ca/cb channels
        return Link(a, b, np.arange(ca), np.arange(ca) // (ca // cb))
    if cb > ca and cb % ca == 0 and st_in % st_out == 0:  # each input index: cb/ca outputs
        return Link(a, b, np.arange(cb) // (cb // ca), np.arange(cb))
    return None


def _symbolic_groups(xs: Any, ys: Any) -> list[tuple[list[int], list[int], bool]] | None:
    """Dim groups of a reshape with symbolic dims: equal leading dims pair one to one, so do
    equal trailing ones; the run between them is one group, ``opaque`` when it holds a
    symbolic dim (its elements cannot be told apart). None when shapes are unknown."""
    if xs is None or ys is None:
        return None
    n, m = len(xs), len(ys)
    p = 0
    while p < min(n, m) and xs[p] is not None and xs[p] == ys[p]:
        p += 1
    s = 0
    while s < min(n, m) - p and xs[n - 1 - s] is not None and xs[n - 1 - s] == ys[m - 1 - s]:
        s += 1
    groups: list[tuple[list[int], list[int], bool]] = [([k], [k], False) for k in range(p)]
    mid_x, mid_y = list(range(p, n - s)), list(range(p, m - s))
    if mid_x or mid_y:
        groups += _middle_groups(xs, ys, mid_x, mid_y)
    groups += [([n - s + i], [m - s + i], False) for i in range(s)]
    return groups


def _middle_groups(xs, ys, mid_x: list[int], mid_y: list[int]) -> list[tuple[list[int], list[int], bool]]:
    """The static trailing runs of the two middles pair by their products ([T, 4, 16] <->
    [T*?, 64] pairs 4·16 with 64); what precedes them is one opaque group."""

    def static_tail(dims: list[Any]) -> int:
        k = 0
        while k < len(dims) and isinstance(dims[len(dims) - 1 - k], int):
            k += 1
        return k

    dx, dy = [xs[k] for k in mid_x], [ys[k] for k in mid_y]
    tx, ty = static_tail(dx), static_tail(dy)
    for i in range(tx, 0, -1):
        for j in range(ty, 0, -1):
            if (i, j) == (len(dx), len(dy)) or math.prod(dx[len(dx) - i :]) != math.prod(dy[len(dy) - j :]):
                continue
            inner = dim_groups(dx[len(dx) - i :], dy[len(dy) - j :])
            if inner is None:
                continue
            ox, oy = mid_x[len(dx) - i :], mid_y[len(dy) - j :]
            head = [(mid_x[: len(dx) - i], mid_y[: len(dy) - j], True)]
            return head + [([ox[a] for a in gi], [oy[b] for b in go], False) for gi, go in inner]
    if tx == len(dx) and ty == len(dy):
        inner = dim_groups(dx, dy)
        if inner is not None:
            return [([mid_x[a] for a in gi], [mid_y[b] for b in go], False) for gi, go in inner]
    return [(mid_x, mid_y, True)]


def _strip_common_symbolic(xs: Any, ys: Any) -> Any:
    """Drop equal leading symbolic dims (dynamic batch); None when other dims are unknown."""
    if xs is None or ys is None:
        return None, None
    k = 0
    while (
        k < min(len(xs), len(ys))
        and not isinstance(xs[k], int)
        and xs[k] == ys[k]
        and xs[k] is not None
    ):
        k += 1
    rest_x, rest_y = list(xs[k:]), list(ys[k:])
    if not all(isinstance(d, int) for d in rest_x + rest_y):
        return None, None
    return (rest_x, rest_y, k, k), None


def _group_links(
    ctx: RuleContext,
    x: str,
    y: str,
    gi: list[int],
    go: list[int],
    cin: list[Slot],
    cout: list[Slot],
    facts: OpFacts,
) -> bool:
    xs = ctx.shape(x)
    in_dims = [xs[k] for k in gi]
    n = math.prod(in_dims)
    if n > MAX_SLOT_ELEMENTS:
        facts.blocked.append(block(ctx, f"reshaped run of {n} elements is too large to analyse"))
        return False
    if len(cin) > 1 or len(cout) > 1:
        facts.blocked.append(block(ctx, "reshape merges two channel axes"))
        return False
    s_in = cin[0] if cin else None
    s_out = cout[0] if cout else None
    full_in = Slot(x, tuple(gi))
    full_out = Slot(y, tuple(go))
    aligned = _aligned_split(xs, ctx.shape(y), x, y, gi, go, s_in, s_out)
    if aligned is not None:
        facts.links.append(aligned)
        return True
    # the output side: the whole group (one axis or a composite over the group's axes)
    if s_out is not None and s_out != full_out:
        facts.blocked.append(block(ctx, f"channel slot {s_out} covers part of a reshaped run"))
        return False
    if s_in is None:
        # only the output side knows a channel: it must map to one input axis run as a whole
        s_in = full_in if len(gi) == 1 else None
        if s_in is None:
            facts.blocked.append(block(ctx, f"reshape output channel {s_out} mixes input dims"))
            return False
    if s_in == full_in:
        # a split of one channel axis keeps the flat index: which factor shrinks is decided
        # by what else ties its elements (heads), else by the graph's completion (last factor)
        facts.links.append(Link(s_in, full_out))
        return True
    # a channel slot merged with non-channel dims: each merged element -> its channel digit
    if len(go) != 1:
        facts.blocked.append(block(ctx, "reshape splits a merged channel run"))
        return False
    pos = [gi.index(a) for a in s_in.axes]
    if pos != list(range(pos[0], pos[0] + len(pos))):
        facts.blocked.append(block(ctx, "channel axes are not contiguous in the reshape"))
        return False
    digits = np.indices(in_dims).reshape(len(in_dims), -1)
    sub = [in_dims[p] for p in pos]
    ch = np.ravel_multi_index(tuple(digits[p] for p in pos), sub)
    facts.links.append(Link(s_in, full_out, ch, np.arange(n)))
    return True
