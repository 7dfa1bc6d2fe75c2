"""LSTM, GRU and RNN: hidden units are channels (METHODS.md §1.3 "cut" family, §1.4 trap).

Shapes (H = hidden_size, G = gates: LSTM 4 (i, o, f, c), GRU 3 (z, r, h), RNN 1; D = 1 or 2
directions)::

    X [seq, batch, in] (layout 1: [batch, seq, in])     W [D, G·H, in]   R [D, G·H, H]
    B [D, 2·G·H] (Wb then Rb)    P [D, 3·H] (LSTM peepholes i, o, f)
    initial_h / initial_c [D, batch, H] (layout 1: [batch, D, H])
    Y [seq, D, batch, H] (layout 1: [batch, seq, D, H])   Y_h / Y_c like initial_h

The hidden axis is the last axis of every state value, and both directions share the unit
index, so a hidden unit u is one channel of ``Y[..., u]``, ``Y_h[..., u]``, ``Y_c[..., u]`` and
``initial_*[..., u]``; it owns rows ``g·H + u`` of W, R, B (both halves) and P for every gate g
and direction (producer rows), and column u of R (read back by every unit at the next step).
``hidden_size`` is rewritten. The input axis (last of X) is read through the columns of W: a
consumer cut, like a Gemm.

Why removal is exact (the zero-group oracle). Zeroing unit u's rows of W, R, B and P makes
every gate pre-activation of u exactly 0 at every step, whatever x and h are (``clip`` keeps
0 at 0). With F = f(0), G = g(0), H = h(0) of the three activation slots and a zero initial
state:

- LSTM: i = o = forget = F, so c_t = F·c_{t-1} + F·G (``input_forget``: (1−F)·c_{t-1} + F·G)
  stays 0 iff F·G = 0, and then h_t = F·H(0) is 0 iff F·H = 0 (defaults: F = ½, G = H = 0);
- GRU: z = F and n = G, so h_t = (1−F)·G + F·h_{t-1} stays 0 iff (1−F)·G = 0 (with
  ``linear_before_reset`` either way: the reset gate only multiplies terms of unit u that are
  0 already);
- RNN: h_t = F, 0 iff F = 0 (Tanh, Relu; not Sigmoid).

A unit whose h stays 0 feeds nothing to the others through its R column, so removing that
column is exact too. An initial state that is an activation must itself carry 0 on the
removed units: the rule's transfer reports the outputs' carried constant as 0 only then (and
NaN otherwise), and the graph then refuses to drop R's column of a non-zero unit. Activations
whose value at 0 depends on ``activation_alpha``/``activation_beta`` (Affine, HardSigmoid) are
not trusted: the indexing of those lists differs between runtimes.

A removed *input* channel that carries a constant κ (METHODS.md §1.4) adds W[:, c]·κ_c to
every step's gate pre-activation: it folds exactly into the W half of B.
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

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}

# value of each ONNX recurrent activation at 0; None where it depends on alpha/beta
_AT_ZERO = {
    "relu": 0.0,
    "tanh": 0.0,
    "sigmoid": 0.5,
    "leakyrelu": 0.0,
    "thresholdedrelu": 0.0,
    "scaledtanh": 0.0,
    "elu": 0.0,
    "softsign": 0.0,
    "softplus": math.log(2.0),
    "affine": None,
    "hardsigmoid": None,
}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _directions(ctx: RuleContext) -> int:
    return 2 if _str(ctx.attr("direction", "forward")) == "bidirectional" else 1


def _zero_condition(ctx: RuleContext) -> str | None:
    """None when a zeroed unit provably stays 0; else the reason it does not."""
    op = ctx.node.op_type
    n_act = len(_DEFAULT_ACTS[op])
    d = _directions(ctx)
    acts = ctx.attr("activations")
    acts = [_str(a) for a in acts] if acts else _DEFAULT_ACTS[op] * d
    if len(acts) != n_act * d:
        return f"{op} lists {len(acts)} activations, expected {n_act * d}"
    for k in range(d):
        names = acts[k * n_act : (k + 1) * n_act]
        vals = [_AT_ZERO.get(a.lower(), "?") for a in names]
        for a, v in zip(names, vals, strict=True):
            if v == "?":
                return f"{op} activation {a} is unknown"
            if v is None:
                return f"{op} activation {a} takes alpha/beta: its value at 0 is not certain"
        f0 = vals[0]
        if op == "LSTM":
            g0, h0 = vals[1], vals[2]
            if f0 * g0 != 0 or f0 * h0 != 0:
                return (
                    f"LSTM activations {names} do not keep a zeroed unit at 0 "
                    f"(f(0)·g(0) = {f0 * g0:g}, f(0)·h(0) = {f0 * h0:g})"
                )
        elif op == "GRU":
            g0 = vals[1]
            if (1 - f0) * g0 != 0:
                return f"GRU activations {names} do not keep a zeroed unit at 0 ((1 − f(0))·g(0) = {(1 - f0) * g0:g})"
        elif f0 != 0:
            return f"RNN activation {names[0]} is {f0:g} at 0: a zeroed unit does not stay 0"
    return None


def _macs(node, ctx: RuleContext) -> int:
    w, r, y = ctx.shape(ctx.input(1)), ctx.shape(ctx.input(2)), ctx.shape(ctx.output(0))
    x = ctx.shape(ctx.input(0))
    if w is None or r is None or x is None or not all(isinstance(v, int) for v in (*w, *r, *x[:2])):
        return 0
    del y
    steps = x[0] * x[1]  # seq·batch (either layout)
    return steps * w[0] * (w[1] * w[2] + r[1] * r[2])


def _hidden_fixup(node_name: str, state: str) -> Fixup:
    def apply(node: ir.Node, info: FixInfo) -> None:
        new = info.new_shape(state)
        node.attributes["hidden_size"] = ir.AttrInt64("hidden_size", int(new[-1]))

    return Fixup(node_name, "rewrite hidden_size", apply)


def _bias_fold(w: str, b: str, gh: int):
    """A constant input channel c adds W[d, :, c]·κ_c to every step: into Wb (B[:, :G·H])."""

    def fold(node: ir.Node, removed: np.ndarray, kappa: np.ndarray, consts) -> None:
        wt = consts.get(w)
        k = np.where(removed, kappa, 0.0)
        delta = np.einsum("dkc,c->dk", wt.astype(np.float64), k)
        bias = consts.get(b).copy()
        bias[:, :gh] = (bias[:, :gh] + delta).astype(bias.dtype)
        consts.arrays[b] = bias

    return fold


@rule("LSTM", "GRU", "RNN", opsets=(7, None), macs=_macs)
def recurrent(node, ctx: RuleContext) -> OpFacts:
    """Hidden units are one channel space over W/R/B/P rows, R columns and every state."""
    op = node.op_type
    x, w, r, b = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    h0 = ctx.input(5)
    c0 = ctx.input(6) if op == "LSTM" else None
    p = ctx.input(7) if op == "LSTM" else None
    outs = [ctx.output(k) for k in range(len(node.outputs))]
    for name, what in ((w, "W"), (r, "R"), (b, "B"), (p, "P")):
        if name is not None and not ctx.is_param(name):
            return block(ctx, f"{op} {what} is not a constant initializer")
    ws = ctx.shape(w)
    if ws is None or len(ws) != 3 or not all(isinstance(v, int) for v in ws):
        return block(ctx, f"{op} W has an unknown shape")
    gates = _GATES[op]
    hidden = ws[1] // gates
    states = [v for v in (outs[0] if outs else None, *outs[1:3]) if v is not None]
    if not states:
        return block(ctx, f"{op} has no output")
    facts = OpFacts()

    # -- the input side: W columns read X's last axis ------------------------------------
    xr = ctx.rank(x)
    if xr is None:
        return block(ctx, f"{op} input rank is unknown")
    sx = Slot(x, (xr - 1,))
    for s in ctx.slots(x):
        if s != sx:
            return block(ctx, f"{op} does not carry channel slot {s} (only the feature axis)")
    facts.params.append(Param(w, 2, sx, Role.WEIGHT_IN))
    if b is not None:
        facts.folds[sx] = _bias_fold(w, b, gates * hidden)

    # -- the hidden side --------------------------------------------------------------------
    state_slots = []
    for v in states:
        vr = ctx.rank(v)
        if vr is None:
            return block(ctx, f"{op} output rank is unknown", tuple(states))
        state_slots.append(Slot(v, (vr - 1,)))
    for v in (h0, c0):
        if v is not None and not ctx.is_param(v):
            vr = ctx.rank(v)
            if vr is None:
                return block(ctx, f"{op} initial state rank is unknown", tuple(states))
            state_slots.append(Slot(v, (vr - 1,)))
    for sl in state_slots:
        for s in ctx.slots(sl.value):
            if s != sl:
                facts.blocked.append(
                    block(
                        ctx,
                        f"{op} does not carry channel slot {s} (only the hidden axis)",
                        tuple(states),
                    )
                )
                return facts
    sy = state_slots[0]
    reason = _zero_condition(ctx)
    if reason is not None:
        facts.blocked.append(block(ctx, reason, tuple(s.value for s in state_slots)))
        return facts
    for sl in state_slots[1:]:
        facts.links.append(Link(sl, sy) if sl.value in (h0, c0) else Link(sy, sl))
    rows = np.arange(gates * hidden) % hidden
    facts.params.append(Param(w, 1, sy, Role.WEIGHT_OUT, rows))
    facts.params.append(Param(r, 1, sy, Role.WEIGHT_OUT, rows))
    facts.params.append(Param(r, 2, sy, Role.WEIGHT_IN))
    if b is not None:
        facts.params.append(Param(b, 1, sy, Role.BIAS, np.arange(2 * gates * hidden) % hidden))
    if p is not None:
        facts.params.append(Param(p, 1, sy, Role.OTHER, np.arange(3 * hidden) % hidden))
    for v in (h0, c0):
        if v is not None and ctx.is_param(v):
            facts.params.append(Param(v, len(ctx.shape(v)) - 1, sy, Role.OTHER))
    facts.fixups.append(_hidden_fixup(node.name, sy.value))
    facts.transfer = _state_transfer(
        ctx,
        [s for s in state_slots if s.value in (h0, c0)],
        [s for s in state_slots if s.value not in (h0, c0)],
    )
    return facts


def _state_transfer(ctx: RuleContext, inits: list[Slot], outs: list[Slot]):
    """Removed units output 0 when every activation initial state carries 0 on them."""

    def transfer(kappa):
        n = ctx.slot_size(outs[0])
        ok = np.ones(n, dtype=bool)
        for s in inits:
            k = kappa.get(s)
            if k is None:
                ok[:] = False
            else:
                ok &= np.asarray(k) == 0
        val = np.where(ok, 0.0, np.nan)
        return {s: val.copy() for s in outs}

    return transfer
