"""Torch kernels for ONNX math ops: element-wise, activations, MatMul/Gemm/Einsum, reductions,
Softmax family, ArgMax/TopK/CumSum/Trilu. Semantics follow the ONNX operator spec (onnx.defs),
attribute defaults per opset.

Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch
import torch.nn.functional as F  # noqa: TID253

from spa_nm.train.ops_common import axis, ints, unidirectional
from spa_nm.train.registry import NodeSpec, op

__all__: list[str] = []

# ---------------------------------------------------------------- element-wise, no attributes

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "HardSwish": F.hardswish,
    "Mish": F.mish,
}


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]):
    def build(node: NodeSpec):
        return lambda rt, x: fn(x)

    return build


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("LeakyRelu")
def _leaky_relu(node: NodeSpec):
    alpha = node.attr("alpha", 0.01)
    return lambda rt, x: F.leaky_relu(x, alpha)


@op("Elu")
def _elu(node: NodeSpec):
    alpha = node.attr("alpha", 1.0)
    return lambda rt, x: F.elu(x, alpha)


@op("Selu")
def _selu(node: NodeSpec):
    # the spec's defaults, to float32 precision
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return lambda rt, x: gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@op("Celu")
def _celu(node: NodeSpec):
    alpha = node.attr("alpha", 1.0)
    return lambda rt, x: F.celu(x, alpha)


@op("ThresholdedRelu")
def _thresholded_relu(node: NodeSpec):
    alpha = node.attr("alpha", 1.0)
    return lambda rt, x: torch.where(x > alpha, x, torch.zeros_like(x))


@op("HardSigmoid")
def _hard_sigmoid(node: NodeSpec):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return lambda rt, x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@op("Gelu", opsets=(20, None))
def _gelu(node: NodeSpec):
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise node.unsupported(f"approximate={approximate!r}")
    return lambda rt, x: F.gelu(x, approximate=approximate)


@op("Shrink")
def _shrink(node: NodeSpec):
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)

    def run(rt, x):
        return torch.where(
            x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x))
        )

    return run


@op("PRelu", weights=(1,))
def _prelu(node: NodeSpec):
    def run(rt, x, slope):
        return torch.where(x < 0, x * unidirectional(slope, x.dim()), x)

    return run


def _clamp(x, lo, hi):
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None and lo <= hi and x.is_floating_point():
        return F.hardtanh(x, lo, hi)  # one fused backward (ReLU6 and the like)
    return torch.clamp(x, lo, hi)


@op("Clip", opsets=(1, 10))
def _clip_attr(node: NodeSpec):
    lo, hi = node.attr("min", None), node.attr("max", None)
    return lambda rt, x: _clamp(x, lo, hi)


@op("Clip", opsets=(11, None), config=(1, 2))
def _clip(node: NodeSpec):
    def run(rt, x, lo=None, hi=None):
        lo = None if lo is None else lo.item()
        hi = None if hi is None else hi.item()
        return _clamp(x, lo, hi)

    return run


# ---------------------------------------------------------------- binary and variadic


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # C integer division, as onnxruntime


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def build(node: NodeSpec):
        return lambda rt, a, b: fn(a, b)

    return build


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op("Pow", fixed=(1,))
def _pow(node: NodeSpec):
    def run(rt, x, y):
        out = torch.pow(x, y)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    return run


@op("Mod")
def _mod(node: NodeSpec):
    fmod = node.attr("fmod", 0)
    return lambda rt, a, b: torch.fmod(a, b) if fmod else torch.remainder(a, b)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mean: bool = False):
    def build(node: NodeSpec):
        def run(rt, *xs):
            out = functools.reduce(fn, xs)
            return out / len(xs) if mean else out

        return run

    return build


op("Sum")(_variadic(torch.add))
op("Mean")(_variadic(torch.add, mean=True))
op("Max")(_variadic(torch.maximum))
op("Min")(_variadic(torch.minimum))


# ---------------------------------------------------------------- linear algebra


@op("MatMul", weights=(0, 1))
def _matmul(node: NodeSpec):
    return lambda rt, a, b: torch.matmul(a, b)


@op("Gemm", weights=(0, 1, 2))
def _gemm(node: NodeSpec):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)

    def run(rt, a, b, c=None):
        a = a.t() if ta else a
        b = b.t() if tb else b
        if c is None or beta == 0:
            y = a @ b
            return y if alpha == 1 else alpha * y
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)

    return run


@op("Einsum", weights=(0, 1, 2, 3))
def _einsum(node: NodeSpec):
    eq = node.attr("equation").replace(" ", "")
    return lambda rt, *xs: torch.einsum(eq, *xs)


# ---------------------------------------------------------------- reductions


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


_REDUCE: dict[str, Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]] = {
    "ReduceSum": lambda x, d, k: torch.sum(x, d, keepdim=k),
    "ReduceMean": lambda x, d, k: torch.mean(x, d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}
# first opset where axes is an input (and noop_with_empty_axes exists)
_AXES_INPUT_SINCE = dict.fromkeys(_REDUCE, 18) | {"ReduceSum": 13}


def _reduce(fn, from_input: bool):
    def build(node: NodeSpec):
        keep = bool(node.attr("keepdims", 1))
        noop = bool(node.attr("noop_with_empty_axes", 0))
        attr_axes = node.attr("axes", None)

        def run(rt, x, axes_t=None):
            axes = ints(axes_t) if from_input else list(attr_axes or ())
            if not axes:
                if noop and from_input:
                    return x
                axes = list(range(x.dim()))
            if x.dim() == 0:
                return fn(x.reshape(1), (0,), False)
            return fn(x, tuple(sorted({axis(a, x.dim()) for a in axes})), keep)

        return run

    return build


for _name, _fn in _REDUCE.items():
    _since = _AXES_INPUT_SINCE[_name]
    op(_name, opsets=(1, _since - 1))(_reduce(_fn, from_input=False))
    op(_name, opsets=(_since, None), config=(1,))(_reduce(_fn, from_input=True))


@op("ArgMax", "ArgMin")
def _argmax(node: NodeSpec):
    ax = node.attr("axis", 0)
    keep = bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin

    def run(rt, x):
        a = axis(ax, x.dim())
        if last:  # the last of equal extremes: search the flipped tensor
            idx = x.shape[a] - 1 - fn(torch.flip(x, (a,)), a, keepdim=keep)
        else:
            idx = fn(x, a, keepdim=keep)
        return idx

    return run


@op("TopK", opsets=(1, 9))
def _topk_attr(node: NodeSpec):
    k, ax = node.attr("k"), node.attr("axis", -1)
    return lambda rt, x: tuple(torch.topk(x, k, axis(ax, x.dim()), largest=True, sorted=True))


@op("TopK", opsets=(10, None), config=(1,))
def _topk(node: NodeSpec):
    ax = node.attr("axis", -1)
    largest = bool(node.attr("largest", 1))

    def run(rt, x, k):
        # always sorted: a valid order for sorted=0 too (the spec leaves that order open)
        vals, idx = torch.topk(x, ints(k)[0], axis(ax, x.dim()), largest=largest, sorted=True)
        return vals, idx

    return run


@op("CumSum", config=(1,))
def _cumsum(node: NodeSpec):
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))

    def run(rt, x, ax):
        a = axis(ints(ax)[0], x.dim())
        y = torch.flip(x, (a,)) if reverse else x
        s = torch.cumsum(y, a)
        if exclusive:  # shift by one: each entry sums the ones before it, exactly
            s = torch.narrow(s, a, 0, s.shape[a] - 1)
            pad = [0, 0] * (x.dim() - 1 - a) + [1, 0]
            s = F.pad(s, pad)
        return torch.flip(s, (a,)) if reverse else s

    return run


@op("Trilu", config=(1,))
def _trilu(node: NodeSpec):
    upper = bool(node.attr("upper", 1))

    def run(rt, x, k=None):
        kk = ints(k)[0] if k is not None else 0
        return torch.triu(x, kk) if upper else torch.tril(x, kk)

    return run


# ---------------------------------------------------------------- softmax family


def _softmax_like(kind: str, coerce_2d: bool):
    def build(node: NodeSpec):
        ax = node.attr("axis", 1 if coerce_2d else -1)

        def apply(x: torch.Tensor, a: int) -> torch.Tensor:
            if kind == "Softmax":
                return torch.softmax(x, a)
            if kind == "LogSoftmax":
                return torch.log_softmax(x, a)
            idx = torch.argmax(x, a, keepdim=True)
            return torch.zeros_like(x).scatter_(a, idx, 1.0)

        def run(rt, x):
            a = axis(ax, x.dim())
            if not coerce_2d or a == x.dim() - 1:
                return apply(x, a)
            # opset < 13: flatten to (prod(dims[:axis]), prod(dims[axis:])) first
            shape = x.shape
            y = apply(x.reshape(math.prod(shape[:a]), math.prod(shape[a:])), 1)
            return y.reshape(shape)

        return run

    return build


for _name in ("Softmax", "LogSoftmax", "Hardmax"):
    op(_name, opsets=(1, 12))(_softmax_like(_name, coerce_2d=True))
    op(_name, opsets=(13, None))(_softmax_like(_name, coerce_2d=False))


@op("LpNormalization")
def _lp_normalization(node: NodeSpec):
    ax, p = node.attr("axis", -1), node.attr("p", 2)
    return lambda rt, x: x / torch.linalg.vector_norm(x, p, axis(ax, x.dim()), keepdim=True)
