"""Element-wise ops: unary activations pass channels through; binary ops couple or broadcast.

A binary operand that is broadcast along a channel slot (size 1 there) is not coupled; a constant
operand with the full channel extent is a member slice (a per-channel bias, scale or PRelu slope);
a non-constant operand with the full extent shares the slot (residual add, SE gate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

import onnx_ir as ir
from spa_nm.facts import Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block, passthrough, unary_transfer
from spa_nm.rules._registry import rule

__all__: list[str] = []


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[float])(v) if v.size else v


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + _erf(v / math.sqrt(2)))


def _gelu_tanh(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# Cast targets whose rounding numpy reproduces exactly; others carry an unknown constant
_CAST_EXACT = (np.float16, np.float32, np.float64, np.bool_, np.int8, np.int16, np.int32,
               np.int64, np.uint8, np.uint16, np.uint32, np.uint64)  # fmt: skip


def _cast_fn(to) -> Callable[[np.ndarray], np.ndarray]:
    """A constant cast to ``to`` is rounded to that type (float16, an integer, ...)."""
    try:
        dt = np.dtype(ir.DataType(int(to)).numpy())
    except Exception:
        dt = None
    if dt is None or dt.type not in _CAST_EXACT:
        return lambda v: np.full_like(v, np.nan)

    def cast(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        ok = np.isfinite(v)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            ok &= (v >= info.min) & (v <= info.max)
        with np.errstate(all="ignore"):
            out = np.where(ok, v, 0).astype(dt).astype(np.float64)
        return np.where(ok, out, np.nan)

    return cast


def _unary_fns(ctx: RuleContext) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    a = ctx.attr
    return {
        "Relu": lambda v: np.maximum(v, 0),
        "LeakyRelu": lambda v: np.where(v >= 0, v, a("alpha", 0.01) * v),
        "Elu": lambda v: np.where(v >= 0, v, a("alpha", 1.0) * (np.exp(v) - 1)),
        "Celu": lambda v: (
            np.maximum(v, 0) + np.minimum(0, a("alpha", 1.0) * (np.exp(v / a("alpha", 1.0)) - 1))
        ),
        "Selu": lambda v: (  # the defaults are the spec's float32 constants, not rounded ones
            a("gamma", 1.05070102214813232421875)
            * np.where(v > 0, v, a("alpha", 1.67326319217681884765625) * (np.exp(v) - 1))
        ),
        "ThresholdedRelu": lambda v: np.where(v > a("alpha", 1.0), v, 0.0),
        "Sigmoid": _sigmoid,
        "HardSigmoid": lambda v: np.clip(a("alpha", 0.2) * v + a("beta", 0.5), 0, 1),
        "HardSwish": lambda v: v * np.clip(v / 6 + 0.5, 0, 1),
        "Tanh": np.tanh,
        "Softplus": lambda v: np.log1p(np.exp(v)),
        "Softsign": lambda v: v / (1 + np.abs(v)),
        "Mish": lambda v: v * np.tanh(np.log1p(np.exp(v))),
        "Gelu": _gelu_tanh if _str(a("approximate", "none")) == "tanh" else _gelu,
        "Erf": _erf,
        "Exp": np.exp,
        "Log": np.log,
        "Sqrt": np.sqrt,
        "Reciprocal": lambda v: 1.0 / v,
        "Neg": np.negative,
        "Abs": np.abs,
        "Sign": np.sign,
        "Floor": np.floor,
        "Ceil": np.ceil,
        "Round": np.round,
        "Sin": np.sin,
        "Cos": np.cos,
        "Identity": lambda v: v,
        "Dropout": lambda v: v,
        "Cast": _cast_fn(a("to")),
        "Clip": lambda v: v,  # replaced below: bounds are inputs from opset 11
    }


UNARY = (
    "Relu", "LeakyRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt",
    "Reciprocal", "Neg", "Abs", "Sign", "Floor", "Ceil", "Round", "Sin", "Cos", "Identity",
    "Dropout", "Cast", "Clip",
)  # fmt: skip


@rule(*UNARY)
def unary(node, ctx: RuleContext) -> OpFacts:
    """Same shape in and out: every axis passes through; the carried constant becomes f(c)."""
    x, y = ctx.input(0), ctx.output(0)
    facts = OpFacts()
    if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
        return block(ctx, "the Dropout mask output is used")
    passthrough(ctx, x, y, facts=facts)
    fn = _unary_fns(ctx)[node.op_type]
    if node.op_type == "Clip":
        lo, hi = _clip_bounds(ctx)
        if lo is None:
            fn = lambda v: np.full_like(v, np.nan)  # noqa: E731  (bounds computed at run time)
        else:
            fn = lambda v, lo=lo, hi=hi: np.clip(v, lo, hi)  # noqa: E731
    facts.transfer = unary_transfer(facts.links, _size_fn(ctx), fn)
    return facts


def _clip_bounds(ctx: RuleContext) -> tuple[float | None, float | None]:
    if ctx.opset < 11:
        return ctx.attr("min", -np.inf), ctx.attr("max", np.inf)
    lo_name, hi_name = ctx.input(1), ctx.input(2)
    lo = -np.inf if lo_name is None else ctx.const(lo_name)
    hi = np.inf if hi_name is None else ctx.const(hi_name)
    if lo is None or hi is None:
        return None, None
    return float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])


def _size_fn(ctx: RuleContext) -> Callable[[Slot], int]:
    def size(s: Slot) -> int:
        n = ctx.slot_size(s)
        if n is None:
            raise ValueError(f"slot {s} has no static size")
        return n

    return size


# -- binary / variadic broadcasting ops -----------------------------------------------------

_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
    "Sum": np.add,
    "Pow": np.power,
    "PRelu": lambda x, s: np.where(x < 0, s * x, x),
}


_LOGICAL = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where")


@rule("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", *_LOGICAL)
def broadcast(node, ctx: RuleContext) -> OpFacts:
    """Numpy broadcasting: couple full-extent operands, take constant ones as member slices."""
    y = ctx.output(0)
    ys = ctx.shape(y)
    ins = [ctx.input(i) for i in range(len(node.inputs))]
    facts = OpFacts()
    if ys is None or any(ctx.shape(v) is None for v in ins if v is not None):
        if ctx.slots(y) or any(ctx.slots(v) for v in ins):
            return block(ctx, "shapes are unknown")
        return facts
    r = len(ys)
    # candidate channel slots in output coordinates
    out_slots = set(ctx.slots(y))
    for v in ins:
        if v is None:
            continue
        shift = r - len(ctx.shape(v))
        for s in ctx.slots(v):
            out_slots.add(Slot(y, tuple(a + shift for a in s.axes)))
    operand: list[tuple[str, str, list[int] | None]] = []  # (value, kind, axes) per out slot
    kinds: dict[Slot, list[tuple[int, str, Slot | None]]] = {}
    for so in sorted(out_slots):
        kinds[so] = []
        for i, v in enumerate(ins):
            if v is None:
                continue
            vs = ctx.shape(v)
            shift = r - len(vs)
            axes = tuple(a - shift for a in so.axes)
            if any(a < 0 for a in axes):
                kinds[so].append((i, "bcast", None))
                continue
            dims = [vs[a] for a in axes]
            if all(d == 1 for d in dims) and any(ys[a] != 1 for a in so.axes):
                kinds[so].append((i, "bcast", None))
            elif dims == [ys[a] for a in so.axes]:
                si = Slot(v, axes)
                if ctx.is_param(v):
                    if len(axes) != 1:
                        return block(ctx, f"constant {v} spans a composite channel slot")
                    role = Role.DIVISOR if node.op_type in ("Div", "Pow") and i == 1 else Role.OTHER
                    if node.op_type == "Pow" and i == 1:
                        return block(ctx, "per-channel exponent")
                    facts.params.append(Param(v, axes[0], so, role))
                    kinds[so].append((i, "param", si))
                else:
                    facts.links.append(Link(si, so))
                    kinds[so].append((i, "link", si))
            else:
                return block(ctx, f"operand {v} partly broadcasts channel slot {so}")
    del operand
    facts.transfer = _binary_transfer(node.op_type, ctx, ins, kinds)
    return facts


def _binary_transfer(op: str, ctx: RuleContext, ins: list[str | None], kinds):
    """Constant carried by a zeroed channel through a broadcasting op (NaN: not a constant)."""
    size = _size_fn(ctx)
    if op in _LOGICAL and op != "Where":  # booleans: not a numeric constant we track
        return lambda kappa: {so: np.full(size(so), np.nan) for so in kinds}

    def operand_value(
        i: int, kind: str, src: Slot | None, so: Slot, kappa: Mapping[Slot, np.ndarray]
    ):
        v = ins[i]
        n = size(so)
        if kind == "link":
            k = kappa.get(src)
            return np.full(n, np.nan) if k is None else k
        if kind == "param":
            # member slices are zeroed by the oracle, divisors keep their value
            if op in ("Div",) and i == 1:
                c = ctx.const(v)
                axis = src.axes[0]
                other = tuple(a for a in range(c.ndim) if a != axis)
                cm = np.moveaxis(c, axis, 0).reshape(c.shape[axis], -1)
                return (
                    np.where(np.all(cm == cm[:, :1], axis=1), cm[:, 0], np.nan).astype(float)
                    if other
                    else cm[:, 0].astype(float)
                )
            return np.zeros(n)
        c = ctx.const(v)
        if c is not None and c.size and np.all(c == c.reshape(-1)[0]):
            return np.full(n, float(c.reshape(-1)[0]))
        return np.full(n, np.nan)

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        out = {}
        for so, ops in kinds.items():
            vals = [operand_value(i, k, s, so, kappa) for i, k, s in ops]
            with np.errstate(all="ignore"):
                if op == "Where":
                    # either branch: a constant only where both branches carry the same one
                    by_input = {i: v for (i, _, _), v in zip(ops, vals, strict=True)}
                    a, b = by_input.get(1), by_input.get(2)
                    res = np.where(a == b, a, np.nan) if a is not None and b is not None else np.full(size(so), np.nan)
                elif op == "Mean":
                    res = sum(vals) / len(vals)
                elif op in ("Mul",):
                    res = vals[0]
                    for v in vals[1:]:
                        zero = (res == 0) | (v == 0)
                        res = np.where(zero, 0.0, res * v)
                else:
                    f = _BINARY[op]
                    res = vals[0]
                    for v in vals[1:]:
                        res = f(res, v)
            out[so] = np.where(np.isfinite(res), res, np.nan)
        return out

    return transfer


@rule("Not", "IsNaN", "IsInf")
def logical_not(node, ctx: RuleContext) -> OpFacts:
    """Element-wise with a boolean output (``Where(IsNaN(p), 0, p)`` guards a softmax): every
    axis passes through; the output is not a numeric constant."""
    facts = passthrough(ctx, ctx.input(0), ctx.output(0))
    facts.transfer = unary_transfer(facts.links, _size_fn(ctx), lambda v: np.full_like(v, np.nan))
    return facts
