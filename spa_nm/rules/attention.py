"""Attention: MatMul (and Einsum) between activations, and the fused attention ops.

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
import onnx_ir as ir

from spa_nm.facts import Blocked, FixInfo, Fixup, Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import RestrictedContext, block, map_axes
from spa_nm.rules._registry import rule

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
        pos[(0, ax)] = (
            ("K", 0) if ax == ra - 1 else ("M", 0) if ax == ra - 2 else ("b", ax + ry - ra)
        )
    for ax in range(rb):
        pos[(1, ax)] = (
            ("N", 0) if ax == rb - 1 else ("K", 0) if ax == rb - 2 else ("b", ax + ry - rb)
        )
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
    if any(s is None for s in shapes):
        return block(ctx, "MatMul of two activations with unknown shapes")
    for t, v in enumerate(names):  # symbolic dims (batch, sequence) are fine off the channels
        if any(not isinstance(shapes[t][a], int) for s in known[t] for a in s.axes):
            return block(ctx, f"channel slot on a dim of unknown size of {v}")
    sa, sb, sy = shapes
    if len(sa) < 2 or len(sb) < 2:
        return block(ctx, "MatMul with a 1-D operand")
    pos, members = _positions(len(sa), len(sb), sa, sb, sy)
    return _couple(ctx, names, shapes, known, pos, members)


def _couple(ctx: RuleContext, names, shapes, known, pos, members) -> OpFacts | Blocked:
    """Link every channel slot to the same position on the other members (the last name is
    the output); composite slots spanning positions collapse per the attention mode."""
    out = len(names) - 1
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
        if t2 == out:
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

    for t in range(len(names)):
        for s in known[t]:
            if any((t, a) not in pos for a in s.axes):
                return block(ctx, f"channel slot {s} is not an axis of {names[t]}")
            if len(s.axes) > 1 and len({pos[(t, a)] for a in s.axes}) == 1:
                return block(ctx, f"composite channel slot {s} within one axis of the product")
            ax = collapse_axis(t, s)
            p = pos[(t, ax)]
            if (t, ax) not in members.get(p, []):
                return block(ctx, f"channel slot {s} is broadcast by the product")
            digit = digits(t, s)
            for t2, ax2 in members[p]:
                if t2 == t:
                    continue
                target = Slot(names[t2], (ax2,))
                clash = [o for o in known[t2] if ax2 in o.axes and o != target]
                if any(collapse_axis(t2, o) != ax2 for o in clash):
                    return block(
                        ctx,
                        f"operands carry channel slots {s} and {clash[0]} on one axis "
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


# -- Einsum -------------------------------------------------------------------------------------


def _einsum_terms(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Tokens per input axis and per output axis; ``...`` becomes right-aligned tokens."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    n_ell = 0
    for term, r in zip(terms, ranks, strict=True):
        if "..." in term:
            n_ell = max(n_ell, r - (len(term) - 3))

    def tokens(term: str, r: int | None) -> list[str] | None:
        if "..." not in term:
            return list(term)
        k = n_ell if r is None else r - (len(term) - 3)
        head, _, tail = term.partition("...")
        return [*head, *(f"...{i}" for i in range(n_ell - k, n_ell)), *tail]

    ins = [tokens(term, r) for term, r in zip(terms, ranks, strict=True)]
    if any(tk is None or len(tk) != r for tk, r in zip(ins, ranks, strict=True)):
        return None
    if arrow:
        outs = tokens(rhs, None)
    else:  # implicit: the ellipsis, then letters that appear once, sorted
        letters = [c for term in terms for c in term if c.isalpha()]
        outs = [f"...{i}" for i in range(n_ell)] + sorted(
            c for c in set(letters) if letters.count(c) == 1
        )
    return ins, outs


@rule("Einsum", opsets=(12, None))
def einsum(node, ctx: RuleContext) -> OpFacts | Blocked:
    """A letter is a position (METHODS.md §1.3, Einsum): contracted letters unify the operands'
    axes, free letters pass to the output; removing one index of a letter from every operand
    that carries it at full size is exact, as for MatMul."""
    names = (*(ctx.input(i) for i in range(len(node.inputs))), ctx.output(0))
    shapes = tuple(ctx.shape(v) for v in names)
    known = [ctx.slots(v) for v in names]
    weighted = any(ctx.is_param(v) for v in names[:-1])  # a weight produces channels itself
    if not any(known) and not weighted:
        return OpFacts()
    if any(v is None for v in names) or any(s is None for s in shapes):
        return block(ctx, "Einsum with unknown shapes")
    for t, v in enumerate(names):
        if any(not isinstance(shapes[t][a], int) for s in known[t] for a in s.axes):
            return block(ctx, f"channel slot on a dim of unknown size of {v}")
    parsed = _einsum_terms(str(ctx.attr("equation", "")), [len(s) for s in shapes[:-1]])
    if parsed is None or len(parsed[1]) != len(shapes[-1]):
        return block(ctx, "Einsum equation does not match its operands")
    terms = [*parsed[0], parsed[1]]
    if any(len(set(tk)) != len(tk) for tk in terms):
        return block(ctx, "Einsum with a repeated letter in one operand (a diagonal)")
    consts = [t for t in range(len(names) - 1) if ctx.is_param(names[t])]
    if consts:
        if len(names) != 3 or len(consts) != 1:
            return block(ctx, "Einsum with constant operands other than one weight of one input")
        return _einsum_linear(ctx, names, shapes, terms, consts[0])
    size: dict[str, int | str] = {}
    for tk, s in zip(terms, shapes, strict=True):
        for letter, d in zip(tk, s, strict=True):
            if d != 1:
                size[letter] = d
    pos, members = {}, {}
    for t, tk in enumerate(terms):
        for ax, letter in enumerate(tk):
            pos[(t, ax)] = (letter, 0)
            if shapes[t][ax] == 1 and size.get(letter, 1) != 1:
                continue  # broadcast
            members.setdefault((letter, 0), []).append((t, ax))
    return _couple(ctx, names, shapes, known, pos, members)


def _einsum_linear(ctx: RuleContext, names, shapes, terms, wi: int) -> OpFacts | Blocked:
    """An Einsum of one activation with one constant weight is a linear layer written as an
    equation (Keras ``EinsumDense``, JAX/Flax ``DenseGeneral``, ``"bsd,dnh->bsnh"``). Each letter
    of the weight is (METHODS.md §1.2 item 3, per axis):

    - in the output, not the input: an output channel axis the weight produces (its slices are
      the producer rows; a zeroed slice makes those outputs exactly 0);
    - in the input, not the output: contracted, so it reads an input channel axis (the
      consumer columns);
    - in the input and the output: when every letter of the weight is (``"nchw,c->nchw"``,
      a per-channel scale, as Mul by a constant), the weight is a member slice of the channel
      and the output of a zeroed channel is 0; mixed with other letters (a per-group weight,
      ``"bsh,hk->bhk"``) it is not supported, and a channel slot there blocks.

    Letters of the input alone in the output pass through (batch, tokens); a letter of the
    input summed away (in neither the weight nor the output) blocks a channel slot on it."""
    ai = 1 - wi
    a, w, y = names[ai], names[wi], names[2]
    ta, tw, ty = terms[ai], terms[wi], terms[2]
    facts = OpFacts()
    handled: dict[str, set[Slot]] = {a: set(), y: set()}
    if all(letter in ta and letter in ty for letter in tw):
        # a per-channel scale: the input's axes pass through, the weight follows the output
        known = {ax for s in ctx.slots(y) for ax in s.axes} | {
            ty.index(ta[ax]) for s in ctx.slots(a) for ax in s.axes if ta[ax] in ty
        }
        for axw, letter in enumerate(tw):
            sy = Slot(y, (ty.index(letter),))
            if sy.axes[0] not in known or shapes[wi][axw] == 1:
                continue  # not a channel (yet): a spatial scale has no slot to follow
            if shapes[2][sy.axes[0]] != shapes[wi][axw]:
                return block(ctx, f"Einsum weight {w} partly broadcasts channel slot {sy}")
            facts.params.append(Param(w, axw, sy, Role.OTHER))
            facts.resets.append(sy)
        amap = {k: ty.index(letter) for k, letter in enumerate(ta) if letter in ty}
        map_axes(ctx, a, y, amap, facts, what="Einsum sums it away")
        return facts
    for axw, letter in enumerate(tw):
        in_a, in_y = letter in ta, letter in ty
        if in_y and not in_a:
            sy = Slot(y, (ty.index(letter),))
            if shapes[2][sy.axes[0]] == 1:
                continue
            facts.params.append(Param(w, axw, sy, Role.WEIGHT_OUT))
            facts.resets.append(sy)
            handled[y].add(sy)
        elif in_a and not in_y:
            sa = Slot(a, (ta.index(letter),))
            if shapes[ai][sa.axes[0]] == 1:
                continue
            facts.params.append(Param(w, axw, sa, Role.WEIGHT_IN))
            handled[a].add(sa)
        elif in_a and in_y:
            for v, tk in ((a, ta), (y, ty)):
                if any(tk.index(letter) in s.axes for s in ctx.slots(v)):
                    return block(ctx, f"Einsum weight indexed by the channel letter {letter!r} of its input and output")
    # composite slots on the handled axes (a head split on the output) are not per-axis
    for v in (a, y):
        for s in ctx.slots(v):
            if s not in handled[v] and any(Slot(v, (ax,)) in handled[v] for ax in s.axes):
                return block(ctx, f"Einsum does not carry channel slot {s} across its weight axes")
    amap = {k: ty.index(letter) for k, letter in enumerate(ta) if letter in ty and letter not in tw}
    restricted = RestrictedContext(ctx, handled)
    if not map_axes(restricted, a, y, amap, facts, what="Einsum sums it away"):
        return facts
    return facts


# -- the ONNX Attention op (opset 23) ---------------------------------------------------------


def _attention_macs(node, ctx: RuleContext) -> int:
    """Q·Kᵀ and attention·V: B·Hq·S·L·(d + dv)."""
    q, k, v = (ctx.shape(ctx.input(i)) for i in range(3))
    if any(s is None or not all(isinstance(d, int) for d in s) for s in (q, k, v)):
        return 0
    if len(q) == 4:
        b, hq, s, d = q
        seq_l, dv = k[2], v[3]
        return b * hq * s * seq_l * (d + dv)
    hq = int(ctx.attr("q_num_heads", 0) or 0)
    hkv = int(ctx.attr("kv_num_heads", 0) or 0)
    if not hq or not hkv:
        return 0
    return q[0] * hq * q[1] * k[1] * (q[2] // hq + v[2] // hkv)


@rule("Attention", opsets=(23, None), macs=_attention_macs)
def attention(node, ctx: RuleContext) -> OpFacts | Blocked:
    """Scaled dot-product attention with grouped K/V heads (query head ``h`` reads K/V head
    ``h // (Hq / Hkv)``). 3-D inputs pack heads in the last axis (``q_num_heads`` and
    ``kv_num_heads`` say how many), 4-D ones hold them on axis 1.

    ``"heads"`` mode: one unit per K/V head, with its K and V rows and the query heads that read
    it (Q rows, Y columns); the head-count attributes are rewritten. ``"head_dim"`` mode: the
    same index of every query and key head (Q·Kᵀ's contracted axis) and, separately, of every
    value head with Y; an unset ``scale`` (1/√d by default) is fixed to the original value.
    """
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    names = (q, k, v, y)
    if not any(ctx.slots(n) for n in names if n):
        return OpFacts()
    if any(n is None for n in names) or not all(ctx.static(n) for n in names):
        return block(ctx, "Attention with unknown shapes")
    shapes = [ctx.shape(n) for n in names]
    rank = len(shapes[0])
    if ctx.input(4) is not None or ctx.input(5) is not None:
        return block(ctx, "Attention with a past key/value cache")
    if (b := _unused_extra_outputs(node, ctx)) is not None:
        return b
    if rank == 3:
        hq, hkv = int(ctx.attr("q_num_heads", 0) or 0), int(ctx.attr("kv_num_heads", 0) or 0)
    elif rank == 4:
        hq, hkv = shapes[0][1], shapes[1][1]
    else:
        return block(ctx, f"Attention with rank-{rank} inputs")
    if not hq or not hkv or hq % hkv or shapes[2][rank - 3] != shapes[1][rank - 3]:
        return block(ctx, "Attention head counts do not divide")
    mask = ctx.input(3)
    return _sdpa(
        node, ctx, names, shapes, rank, hq, hkv, ctx.shape(mask) if mask else None,
        heads_attrs=("q_num_heads", "kv_num_heads") if rank == 3 else None,
    )  # fmt: skip


def _sdpa(
    node,
    ctx: RuleContext,
    names: tuple[str, str, str, str],
    shapes: list,
    rank: int,
    hq: int,
    hkv: int,
    ms,
    heads_attrs: tuple[str, str] | None,
    bias: str | None = None,
) -> OpFacts | Blocked:
    """The channel facts of scaled dot-product attention over Q, K, V and Y (``names``),
    shared by the ONNX op and onnxruntime's MultiHeadAttention and GroupQueryAttention:
    3-D inputs pack ``hq`` / ``hkv`` heads in the last axis, 4-D ones hold them on axis 1.
    ``ms``: the shape of a mask or bias added to the scores (a head axis blocks heads mode).
    ``heads_attrs``: the attributes holding the query and K/V head counts, rewritten after
    pruning. ``bias``: a constant [Dq + Dk + Dv] added to the projections inside the op
    (heads mode only: each entry dies with its head)."""
    d, dv = (
        (shapes[0][-1] // hq, shapes[2][-1] // hkv) if rank == 3 else (shapes[0][3], shapes[2][3])
    )
    mode = getattr(ctx.view, "attention", "heads")
    if mode == "heads" and ms is not None and len(ms) == 4 and ms[1] != 1:
        return block(ctx, "the attention mask has a head axis")
    if bias is not None and (mode != "heads" or rank != 3):
        return block(ctx, f"{node.op_type} with a bias input prunes whole heads only")
    # slots: 3-D: the packed last axis; 4-D: heads (axis 1) or head dim (axis 3)
    if rank == 3:
        slot = [Slot(n, (2,)) for n in names]
    elif mode == "heads":
        slot = [Slot(n, (1,)) for n in names]
    else:
        slot = [Slot(n, (3,)) for n in names]
    for n, s in zip(names, slot, strict=True):
        for o in ctx.slots(n):
            if o != s:
                return block(ctx, f"{node.op_type} does not carry channel slot {o} ({mode} mode)")
    rep = hq // hkv
    facts = OpFacts()
    # every element is tied to a hub element: K's (head, 0) for heads, (0, j) for head dims
    if mode == "heads":
        per = [d, d, dv, dv] if rank == 3 else [1, 1, 1, 1]
        heads = [hq, hkv, hkv, hq]
        hub = []
        for i in range(4):
            h = np.repeat(np.arange(heads[i]), per[i])
            g = h // rep if heads[i] == hq else h
            hub.append(g * per[1])  # K element of head g, index 0
        for i in (0, 2, 3):
            facts.links.append(_tie(slot[i], slot[1], hub[i], i == 3))
        facts.links.append(Link(slot[1], slot[1], np.arange(hkv * per[1]), hub[1]))
        zero_src = (2, hub[2], hub[3])  # Y is 0 where its V head is
        if bias is not None:
            facts.params.append(Param(bias, 0, slot[1], Role.BIAS, np.concatenate(hub[:3])))
    else:
        if rank == 3:
            jq = np.tile(np.arange(d), hq)
            jk = np.tile(np.arange(d), hkv)
            jv = np.tile(np.arange(dv), hkv)
            jy = np.tile(np.arange(dv), hq)
        else:
            jq, jk, jv, jy = np.arange(d), np.arange(d), np.arange(dv), np.arange(dv)
        facts.links.append(Link(slot[0], slot[1], np.arange(jq.size), jq))
        facts.links.append(Link(slot[1], slot[1], np.arange(jk.size), jk))
        facts.links.append(Link(slot[2], slot[2], np.arange(jv.size), jv))
        facts.links.append(Link(slot[2], slot[3], jy, np.arange(jy.size)))
        zero_src = (2, jv, jy)
        if ctx.attr("scale") is None:
            facts.fixups.append(_scale_fixup(node.name, 1.0 / float(np.sqrt(d))))
    if heads_attrs is not None and mode == "heads":
        facts.fixups.append(_heads_fixup(node.name, names[0], names[1], d, heads_attrs))
    facts.transfer = _attention_transfer(ctx, slot, zero_src)
    return facts


def _tie(a: Slot, hub: Slot, idx: np.ndarray, output: bool) -> Link:
    """Tie every element of ``a`` to ``hub`` element ``idx[i]`` (inputs first)."""
    if output:
        return Link(hub, a, idx, np.arange(idx.size))
    return Link(a, hub, np.arange(idx.size), idx)


def _attention_transfer(ctx: RuleContext, slot: list[Slot], zero_src):
    """Y is 0 where every V element it reads is 0 (a zeroed head or head-dim index)."""
    vi, v_hub, y_hub = zero_src

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        kv = kappa.get(slot[vi])
        n = ctx.slot_size(slot[3])
        if kv is None:
            return {slot[3]: np.full(n, np.nan)}
        zero_at = np.ones(int(max(v_hub.max(), y_hub.max())) + 1, dtype=bool)
        np.logical_and.at(zero_at, v_hub, kv == 0)
        seen = np.zeros_like(zero_at)
        seen[v_hub] = True
        ok = zero_at & seen
        return {slot[3]: np.where(ok[y_hub], 0.0, np.nan)}

    return transfer


def _heads_fixup(node_name: str, q: str, k: str, d: int, attrs: tuple[str, str | None]) -> Fixup:
    """Rewrite the head-count attributes (query heads, then K/V heads if the op has one)."""

    def apply(node, info: FixInfo) -> None:
        nq, nk = info.new_shape(q), info.new_shape(k)
        qa, ka = attrs
        node.attributes[qa] = ir.AttrInt64(qa, int(nq[-1]) // d)
        if ka is not None:
            node.attributes[ka] = ir.AttrInt64(ka, int(nk[-1]) // d)

    return Fixup(node_name, f"rewrite the {node_name} head counts", apply)


def _scale_fixup(node_name: str, scale: float) -> Fixup:
    def apply(node, info: FixInfo) -> None:
        node.attributes["scale"] = ir.AttrFloat32("scale", scale)

    return Fixup(node_name, "keep the Attention scale of the original head size", apply)


def _unused_extra_outputs(node, ctx: RuleContext) -> Blocked | None:
    """A block when an output past the first (a present cache, the scores) is read."""
    for o in node.outputs[1:]:
        if o.name and (o.uses() or o.is_graph_output()):
            return block(ctx, f"{node.op_type} output {o.name} (cache or scores) is used")
    return None
