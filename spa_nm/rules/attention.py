"""Attention: MatMul between two activations, and the fused attention ops.

**MatMul of two activations** (QKᵀ, attention·V; METHODS.md §1.3, "MatMul of two activations"
row). ``Y[..., m, n] = Σ_k A[..., m, k] · B[..., k, n]`` with numpy broadcasting of the batch
axes. Every axis takes one *position*: a batch axis ``b_i`` (shared by A, B and Y where they have
it at full size; an operand of size 1 there is broadcast and not coupled), ``M`` (A and Y),
``N`` (B and Y) or the contracted ``K`` (A and B). Removing index ``i`` of a position from every
member is exact: batch entries and free rows/columns are independent, and a contracted index
only drops its own terms of the sum. So a channel slot on one member links to the same axis of
every other member of its position.

A composite slot (a channel axis split by a Reshape into heads × head_dim, still adjacent: K's
``[B, H, d, T]`` after ``Transpose(0, 2, 3, 1)``) spans two positions (batch ``H`` and ``K``).
It collapses onto one of them, as a Transpose does (`_helpers.split_composites`): onto the
heads in ``"heads"`` mode (whole heads go, with every Q, K and V row of the head and the output
projection's columns), onto the head dim in ``"head_dim"`` mode (the same within-head indices of
Q and K go from every head; V's head dim follows the output projection).

A zeroed channel stays zero: an output element is 0 when every element of either operand that
it is computed from is 0 (zeroed Q or K rows give zero scores; zeroed V rows a zero head).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from spa_nm.facts import Blocked, Link, OpFacts, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block

__all__ = ["batched_matmul"]

Position = tuple[str, int]  # ("b", y axis) | ("M", 0) | ("N", 0) | ("K", 0)


def _positions(
    ra: int, rb: int, sa: tuple, sb: tuple, sy: tuple
) -> tuple[dict[tuple[int, int], Position], dict[Position, list[tuple[int, int]]]]:
    """Position of each (operand, axis) (operand 0: A, 1: B, 2: Y) and the full-size members
    of each position."""
    ry = len(sy)
    pos: dict[tuple[int, int], Position] = {}
    for ax in range(ra):
        pos[(0, ax)] = ("K", 0) if ax == ra - 1 else ("M", 0) if ax == ra - 2 else ("b", ax + ry - ra)
    for ax in range(rb):
        pos[(1, ax)] = ("N", 0) if ax == rb - 1 else ("K", 0) if ax == rb - 2 else ("b", ax + ry - rb)
    for ax in range(ry):
        pos[(2, ax)] = ("N", 0) if ax == ry - 1 else ("M", 0) if ax == ry - 2 else ("b", ax)
    shapes = (sa, sb, sy)
    members: dict[Position, list[tuple[int, int]]] = {}
    for (t, ax), p in pos.items():
        d = shapes[t][ax]
        if p[0] == "b" and t != 2 and d == 1 and sy[p[1]] != 1:
            continue  # broadcast: not coupled
        members.setdefault(p, []).append((t, ax))
    return pos, members


def batched_matmul(node, ctx: RuleContext) -> OpFacts | Blocked:
    """MatMul of two activations: batch axes, free axes and the contracted axis couple."""
    names = (ctx.input(0), ctx.input(1), ctx.output(0))
    shapes = tuple(ctx.shape(v) for v in names)
    known = [ctx.slots(v) for v in names]
    if not any(known):
        return OpFacts()
    if any(s is None for s in shapes) or not all(
        isinstance(d, int) for s in shapes for d in s
    ):
        return block(ctx, "MatMul of two activations with unknown shapes")
    sa, sb, sy = shapes
    if len(sa) < 2 or len(sb) < 2:
        return block(ctx, "MatMul with a 1-D operand")
    pos, members = _positions(len(sa), len(sb), sa, sb, sy)
    mode = getattr(ctx.view, "attention", "heads")
    facts = OpFacts()
    seen: set[tuple[Slot, Slot]] = set()
    # per output slot: (operand, source slot, src idx, dst idx) for the zero transfer
    sources: list[tuple[int, Slot, Slot, np.ndarray | None, np.ndarray | None]] = []

    def add(t1: int, s1: Slot, i1, t2: int, s2: Slot, i2) -> None:
        if t1 > t2:  # inputs first, the output last
            t1, s1, i1, t2, s2, i2 = t2, s2, i2, t1, s1, i1
        if (s1, s2) in seen or s1 == s2:
            return
        seen.add((s1, s2))
        facts.links.append(Link(s1, s2, i1, i2))
        if t2 == 2:
            sources.append((t1, s1, s2, i1, i2))

    def collapse_axis(t: int, s: Slot) -> int:
        """The axis a slot maps through: itself, or (composite) the outer/inner factor."""
        if len(s.axes) == 1:
            return s.axes[0]
        return s.axes[0] if mode == "heads" else s.axes[-1]

    def digits(t: int, s: Slot) -> np.ndarray | None:
        """Index along the collapse axis of each element of ``s`` (None: the identity)."""
        if len(s.axes) == 1:
            return None
        dims = [shapes[t][a] for a in s.axes]
        return np.indices(dims)[s.axes.index(collapse_axis(t, s))].reshape(-1)

    for t in range(3):
        for s in known[t]:
            if any((t, a) not in pos for a in s.axes):
                return block(ctx, f"channel slot {s} is not an axis of {names[t]}")
            if len(s.axes) > 1 and len({pos[(t, a)] for a in s.axes}) == 1:
                return block(ctx, f"composite channel slot {s} within one MatMul axis")
            ax = collapse_axis(t, s)
            p = pos[(t, ax)]
            if (t, ax) not in members.get(p, []):
                return block(ctx, f"channel slot {s} is broadcast by the MatMul")
            digit = digits(t, s)
            for t2, ax2 in members[p]:
                if t2 == t:
                    continue
                target = Slot(names[t2], (ax2,))
                clash = [o for o in known[t2] if ax2 in o.axes and o != target]
                if any(collapse_axis(t2, o) != ax2 for o in clash):
                    return block(
                        ctx,
                        f"MatMul operands carry channel slots {s} and {clash[0]} on one axis "
                        "in different ways",
                    )
                if not clash:
                    add(t, s, None, t2, target, digit)
                    continue
                # both sides are composites collapsing onto this axis: tie each element of s
                # to the first element of the other with the same index, and that one's
                # elements to each other
                other = clash[0]
                d2 = digits(t2, other)
                rep = np.zeros(shapes[t2][ax2], dtype=np.int64)
                rep[d2[::-1]] = np.arange(d2.size)[::-1]
                mine = np.arange(ctx.slot_size(s)) if digit is None else digit
                add(t, s, None, t2, other, rep[mine])
                facts.links.append(Link(other, other, np.arange(d2.size), rep[d2]))
    facts.transfer = _zero_transfer(ctx, sources)
    return facts


def _zero_transfer(ctx: RuleContext, sources):
    """An output element is 0 when all its elements from one operand carry 0, else unknown."""

    def size(s: Slot) -> int:
        n = ctx.slot_size(s)
        if n is None:
            raise ValueError(f"slot {s} has no static size")
        return n

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        zero: dict[tuple[int, Slot], np.ndarray] = {}
        for t, src, dst, i_src, i_dst in sources:
            k = kappa.get(src)
            n_src, n_dst = size(src), size(dst)
            a_idx = np.arange(n_src) if i_src is None else np.asarray(i_src)
            b_idx = np.arange(n_dst) if i_dst is None else np.asarray(i_dst)
            is_zero = np.zeros(n_src, dtype=bool) if k is None else (k == 0)
            acc = zero.setdefault((t, dst), np.ones(n_dst, dtype=bool))
            hit = np.zeros(n_dst, dtype=bool)
            hit[b_idx] = True
            ok = np.ones(n_dst, dtype=bool)
            np.logical_and.at(ok, b_idx, is_zero[a_idx])
            acc &= ok & hit
        out: dict[Slot, np.ndarray] = {}
        for (_, dst), z in zero.items():
            cur = out.setdefault(dst, np.zeros(z.size, dtype=bool))
            cur |= z
        return {s: np.where(z, 0.0, np.nan) for s, z in out.items()}

    return transfer
