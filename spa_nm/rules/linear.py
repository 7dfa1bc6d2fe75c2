"""Gemm and MatMul with a constant weight: cut points (METHODS.md §1.2 item 3).

Gemm B is [K, N] (transB=0) or [N, K] (transB=1); MatMul's constant right operand is [K, N].
Outputs start a new channel space (weight rows of the output axis); inputs are read through
the weight's K axis. A MatMul between two activations is not a cut: its batch, free and
contracted axes couple (``rules/attention.py``).
"""

from __future__ import annotations

import math

import numpy as np

import onnx_ir as ir
from spa_nm.facts import OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import RestrictedContext, block, map_axes
from spa_nm.rules._registry import rule
from spa_nm.rules.attention import batched_matmul

__all__: list[str] = []


def _gemm_macs(node, ctx: RuleContext) -> int:
    ys, bs = ctx.shape(ctx.output(0)), ctx.shape(ctx.input(1))
    if ys is None or bs is None or not all(isinstance(d, int) for d in (*ys, *bs)):
        return 0
    k = bs[1] if ctx.attr("transB", 0) else bs[0]
    return math.prod(ys) * k


def _matmul_macs(node, ctx: RuleContext) -> int:
    ys, a = ctx.shape(ctx.output(0)), ctx.shape(ctx.input(0))
    if ys is None or a is None or not all(isinstance(d, int) for d in (*ys, a[-1])):
        return 0
    return math.prod(ys) * a[-1]


def _gemm_nm(node, ctx: RuleContext):
    """B is [K, N] (transB=0) or [N, K] (transB=1): blocks run along K."""
    return (1, 1 if int(ctx.attr("transB", 0)) else 0)


def _matmul_nm(node, ctx: RuleContext):
    """A constant right operand [..., K, N]: blocks run along K."""
    r = ctx.rank(ctx.input(1))
    return None if r is None or r < 2 else (1, r - 2)


@rule("Gemm", macs=_gemm_macs, nm_axis=_gemm_nm)
def gemm(node, ctx: RuleContext) -> OpFacts:
    a, b, c, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    if not ctx.is_param(b):
        return block(ctx, "Gemm B is not a constant initializer")
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    facts = OpFacts()
    sa, sy = Slot(a, (0 if trans_a else 1,)), Slot(y, (1,))
    for s in ctx.slots(a):
        if s != sa:
            return block(ctx, f"Gemm does not carry channel slot {s}")
    for s in ctx.slots(y):
        if s != sy:
            return block(ctx, f"Gemm does not carry channel slot {s}")
    facts.params.append(Param(b, 0 if trans_b else 1, sy, Role.WEIGHT_OUT))
    facts.params.append(Param(b, 1 if trans_b else 0, sa, Role.WEIGHT_IN))
    facts.resets.append(sy)
    if c is not None:
        cs = ctx.shape(c)
        bs = ctx.shape(b)  # N from B: the output's shape may be unknown to inference
        n = bs[0 if trans_b else 1]
        if not ctx.is_param(c):
            return block(ctx, "Gemm C is not a constant initializer")
        if cs is not None and len(cs) >= 1 and cs[-1] == n and n != 1:
            facts.params.append(Param(c, len(cs) - 1, sy, Role.BIAS))
        else:
            facts.resets.remove(sy)  # a broadcast C keeps zeroed outputs at C, not 0
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    if beta != 0:  # beta = 0 multiplies C away: no bias can absorb a constant input
        facts.folds[sa] = _gemm_fold(b, c, trans_b, alpha, beta, ctx.shape(y))
    return facts


def _gemm_fold(b: str, c: str | None, trans_b: int, alpha: float, beta: float, yshape):
    """Y = alpha·A·B + beta·C: a constant input column k adds alpha·κ_k·B[k, :] to every row."""

    def fold(node: ir.Node, removed: np.ndarray, kappa: np.ndarray, consts) -> None:
        wt = consts.get(b)
        wk = wt.T if trans_b else wt  # [K, N]
        k = np.where(removed, kappa, 0.0)
        delta = (alpha * (k @ wk)).astype(wt.dtype)
        if beta == 0:
            raise ValueError("Gemm beta = 0 cannot carry a folded bias")
        consts.add_bias(node, 2, c, delta / beta)

    return fold


@rule("MatMul", macs=_matmul_macs, nm_axis=_matmul_nm)
def matmul(node, ctx: RuleContext) -> OpFacts:
    a, b, y = ctx.input(0), ctx.input(1), ctx.output(0)
    if not ctx.is_param(b):
        return batched_matmul(node, ctx)  # QKᵀ, attention·V (rules/attention.py)
    bs, as_, ys = ctx.shape(b), ctx.shape(a), ctx.shape(y)
    if bs is None or len(bs) != 2 or as_ is None or len(as_) < 2:
        return block(ctx, "MatMul weight is not a 2-D matrix")
    ra, ry = len(as_), len(ys)
    sa, sy = Slot(a, (ra - 1,)), Slot(y, (ry - 1,))
    facts = OpFacts()
    facts.params.append(Param(b, 1, sy, Role.WEIGHT_OUT))
    facts.params.append(Param(b, 0, sa, Role.WEIGHT_IN))
    facts.resets.append(sy)
    # leading (batch/token) axes pass through
    lead = {k: k for k in range(ra - 1)}
    restricted = RestrictedContext(ctx, {a: {sa}, y: {sy}})
    if not map_axes(restricted, a, y, lead, facts, what="the contracted axis"):
        return facts
    return facts
