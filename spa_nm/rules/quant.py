"""Quantization: QuantizeLinear / DequantizeLinear (QDQ graphs) and the integer-domain ops.

In a QDQ model (onnxruntime ``quantize_static(quant_format=QDQ)``, TensorRT-style exports) every
float op keeps its float form and reads its weight through ``DequantizeLinear`` of an integer
initializer::

    W_q (int8 [C_out, ...]) --DequantizeLinear(scale, zero_point, axis=0)--> W --> Conv
    x --QuantizeLinear(s, z)--> x_q --DequantizeLinear(s, z)--> x' --> ...

- **DequantizeLinear of a constant** is a *derived constant* (`facts.Derived`): Conv, Gemm and
  MatMul read it as their weight or bias, and removing entries along an axis of it removes the
  same entries of the integer tensor and, when the axis is the quantization axis (per-channel
  scales), of ``scale`` and ``zero_point`` too. Per-tensor scales are untouched. The zero-group
  oracle sets the integer entries to the zero point, which dequantizes to exactly 0.
- **QuantizeLinear / DequantizeLinear of an activation** pass every axis through. Per-tensor
  quantization is the same for the channels that stay, so removal is exact; per-axis scales and
  zero points along a channel slot are member slices (kept by the oracle, like divisors). A
  removed channel's carried constant (METHODS.md §1.4) maps exactly:
  q = saturate(round_half_even(κ / s) + z) and κ' = (q − z)·s, in float32 as the runtimes
  compute it, so 0 → z → 0 through a QDQ pair.
- **Integer-domain ops** (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger,
  DynamicQuantizeLinear) block with a reason: their channels live in quantized tensors whose
  zero points would have to be folded; QDQ models prune instead.

Blocked (block_size) quantization, float8/int4 outputs of a carried constant, and integer
weights shared with another reader are declined with a reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spa_nm.facts import Derived, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block, passthrough
from spa_nm.rules._registry import rule

__all__: list[str] = []

_INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)}  # fmt: skip


def _name(node, i: int) -> str | None:
    ins = node.inputs
    return ins[i].name if i < len(ins) and ins[i] is not None and ins[i].name else None


def _attr_int(node, key: str, default: int) -> int:
    a = node.attributes.get(key)
    return default if a is None else int(a.value)


def _per_axis(x_shape: tuple, scale: np.ndarray, axis: int) -> bool | None:
    """True: one scale per entry of ``axis``; False: one scale; None: neither (blocked)."""
    if scale.size == 1:
        return False
    if scale.ndim == 1 and 0 <= axis < len(x_shape) and scale.shape[0] == x_shape[axis]:
        return True
    return None


def _dq_check(node, view) -> tuple[Derived | None, str]:
    """The dequantized weight of ``node`` as a `Derived`, or None and the reason."""
    x, s, z = _name(node, 0), _name(node, 1), _name(node, 2)
    xa = None if x is None else view.const(x)
    sa = None if s is None else view.const(s)
    za = None if z is None else view.const(z)
    if xa is None or sa is None or (z is not None and za is None):
        return None, "DequantizeLinear scale or zero point is computed at run time"
    if xa.dtype.kind not in "iu":
        return None, f"DequantizeLinear of a {xa.dtype} tensor is not an integer weight"
    if _attr_int(node, "block_size", 0):
        return None, "blocked quantization (block_size) of a weight is not supported"
    axis = _attr_int(node, "axis", 1)
    axis = axis + xa.ndim if axis < 0 else axis
    per_axis = _per_axis(xa.shape, sa, axis)
    if per_axis is None:
        return (
            None,
            f"DequantizeLinear scale of shape {list(sa.shape)} is neither per-tensor nor per-axis",
        )
    sliced = [x] + ([s] + ([z] if z else []) if per_axis else [])
    for name in sliced:
        v = view.values.get(name)
        if v is None or (v.is_graph_input() and v.const_value is None):
            return None, f"{name} is not a constant"
        if len(v.uses()) != 1 or v.is_graph_output():
            return None, f"quantized constant {name} is also read by another node"
    zb = np.zeros(1, dtype=np.float32) if za is None else za.astype(np.float32)
    sb = sa.astype(np.float32)
    if per_axis:
        shape = [1] * xa.ndim
        shape[axis] = -1
        zb, sb = zb.reshape(shape), sb.reshape(shape)
    else:
        zb, sb = zb.reshape(()), sb.reshape(())
    value = ((xa.astype(np.float32) - zb) * sb).astype(sa.dtype)

    def sources(a: int) -> list[tuple[str, int]]:
        return [(x, a)] + ([(s, 0)] + ([(z, 0)] if z else []) if per_axis and a == axis else [])

    def zero(get: Callable[[str], np.ndarray], a: int, idx: np.ndarray) -> None:
        arr = get(x)
        target = np.broadcast_to(
            np.asarray(zb if za is not None else 0).astype(arr.dtype), arr.shape
        )
        sl = [slice(None)] * arr.ndim
        sl[a] = idx
        arr[tuple(sl)] = target[tuple(sl)]

    return Derived(node.name or "DequantizeLinear", value, sources, zero), ""


def _dq_derived(node, view) -> Derived | None:
    return _dq_check(node, view)[0]


# -- carried constants through (de)quantization -------------------------------------------


def _quant_range(ctx: RuleContext) -> tuple[float, float] | None:
    """Saturation range of QuantizeLinear's output (from the zero point's type, or
    ``output_dtype``, default uint8); None for types whose rounding we do not model."""
    z = ctx.const(ctx.input(2))
    if z is not None:
        dt = np.dtype(z.dtype)
    else:
        to = int(ctx.attr("output_dtype", 0) or 0)
        dt = (
            np.dtype(np.uint8)
            if to in (0, 2)
            else {3: np.dtype(np.int8), 4: np.dtype(np.uint16), 5: np.dtype(np.int16)}.get(to)
        )
    return None if dt is None or dt not in _INT_RANGES else tuple(map(float, _INT_RANGES[dt]))


def _qdq_transfer(ctx: RuleContext, links, per_axis: bool, axis: int, quantize: bool):
    s = np.asarray(ctx.const(ctx.input(1)), dtype=np.float32).reshape(-1)
    zc = ctx.const(ctx.input(2))
    z = np.zeros(1, np.float32) if zc is None else np.asarray(zc, dtype=np.float32).reshape(-1)
    rng = _quant_range(ctx) if quantize else (-np.inf, np.inf)

    def fn(k: np.ndarray, sl: Slot) -> np.ndarray:
        if per_axis:
            if sl.axes != (axis,):
                return np.full_like(k, np.nan)
            ss, zz = s, z
        else:
            ss, zz = s[0], z[0]
        with np.errstate(all="ignore"):
            k32 = k.astype(np.float32)
            if quantize:
                if rng is None:
                    return np.full_like(k, np.nan)
                q = np.clip(
                    np.rint(k32 / np.float32(ss) if np.ndim(ss) == 0 else k32 / ss) + zz, *rng
                )
                return np.where(np.isnan(k), np.nan, q).astype(np.float64)
            return ((k32 - zz) * ss).astype(np.float64)

    def transfer(kappa):
        out = {}
        for ln in links:
            src = kappa.get(ln.a)
            n = ctx.slot_size(ln.b)
            out[ln.b] = (
                np.full(n, np.nan) if src is None else fn(np.asarray(src, dtype=np.float64), ln.b)
            )
        return out

    return transfer


def _activation(node, ctx: RuleContext, quantize: bool) -> OpFacts:
    """(De)quantization of an activation: every axis passes through."""
    x, s, z, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    facts = OpFacts()
    if not (ctx.slots(x) or ctx.slots(y)):
        return facts
    sa = ctx.const(s)
    if sa is None or (z is not None and ctx.const(z) is None):
        return block(ctx, f"{node.op_type} scale or zero point is computed at run time")
    if int(ctx.attr("block_size", 0) or 0):
        return block(ctx, f"{node.op_type} with block_size on a channel axis is not supported")
    xs = ctx.shape(x)
    if xs is None:
        return block(ctx, "shapes are unknown")
    axis = ctx.axis(x, int(ctx.attr("axis", 1)))
    per_axis = _per_axis(xs, sa, axis)
    if per_axis is None:
        return block(
            ctx,
            f"{node.op_type} scale of shape {list(sa.shape)} is neither per-tensor nor per-axis",
        )
    passthrough(ctx, x, y, facts=facts)
    if per_axis:
        for ln in facts.links:
            if axis in ln.b.axes:
                if ln.b.axes != (axis,):
                    return block(
                        ctx, f"per-axis {node.op_type} across composite channel slot {ln.b}"
                    )
                for name in (s, z):
                    if name is None:
                        continue
                    if not ctx.is_param(name):
                        return block(
                            ctx, f"{node.op_type} per-axis {name} is not a constant initializer"
                        )
                    facts.params.append(Param(name, 0, ln.b, Role.DIVISOR))
    facts.transfer = _qdq_transfer(ctx, facts.links, per_axis, axis, quantize)
    return facts


@rule("DequantizeLinear", opsets=(10, None), derived=_dq_derived)
def dequantize_linear(node, ctx: RuleContext) -> OpFacts:
    """A constant input is a weight (read by its consumer as a derived constant); an activation
    passes through."""
    if ctx.const(ctx.input(0)) is not None:
        d, reason = _dq_check(node, ctx.view)
        if d is None:
            return block(ctx, reason, (ctx.output(0),))
        return OpFacts()
    return _activation(node, ctx, quantize=False)


@rule("QuantizeLinear", opsets=(10, None))
def quantize_linear(node, ctx: RuleContext) -> OpFacts:
    if ctx.const(ctx.input(0)) is not None:
        return block(
            ctx,
            "QuantizeLinear of a constant: the weight is quantized at run time",
            (ctx.output(0),),
        )
    return _activation(node, ctx, quantize=True)


@rule("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
def integer_domain(node, ctx: RuleContext) -> OpFacts:
    return block(
        ctx,
        f"{node.op_type} computes on quantized tensors (QOperator or dynamic quantization): "
        "its channels are not analysed; a QDQ-format model prunes",
    )
