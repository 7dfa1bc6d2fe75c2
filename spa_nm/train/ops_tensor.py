"""Torch kernels for ONNX tensor ops: shape arithmetic, indexing, Pad/Tile, Cast, Where, ...
(ONNX operator spec; attribute defaults per opset), and `constant_value`, which decodes every
value form of a Constant node.

Shape-like results (Shape, Size) are int64 CPU tensors built from ``x.shape`` at run time, so a
graph exported with a symbolic batch runs at any batch size and reading them back (Reshape,
Expand, Slice bounds) needs no device synchronisation.

Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch
import torch.nn.functional as F  # noqa: TID253

from spa_nm.train.ops_common import ONNX_TO_TORCH, as_tensor, axis, ints
from spa_nm.train.registry import NodeSpec, op

__all__ = ["constant_value", "slice_tensor"]


def constant_value(node: NodeSpec) -> np.ndarray:
    """The value of a Constant node, whatever attribute holds it."""
    for key, attr in node.node.attributes.items():
        v = attr.value
        if key == "value":
            return np.asarray(v.numpy())
        if key == "value_float":
            return np.asarray(v, dtype=np.float32)
        if key == "value_floats":
            return np.asarray(list(v), dtype=np.float32)
        if key == "value_int":
            return np.asarray(v, dtype=np.int64)
        if key == "value_ints":
            return np.asarray(list(v), dtype=np.int64)
        if key in ("value_string", "value_strings", "sparse_value"):
            raise node.unsupported(f"Constant with {key}")
    raise node.unsupported("Constant without a value attribute")


def _torch_pad(begin, end) -> list[int]:
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


@op("Identity")
def _identity(node: NodeSpec):
    return lambda rt, x: x


@op("Shape")
def _shape(node: NodeSpec):
    start, end = node.attr("start", 0), node.attr("end", None)
    return lambda rt, x: torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64)


@op("Size")
def _size(node: NodeSpec):
    return lambda rt, x: torch.tensor(x.numel(), dtype=torch.int64)


def _reshape(x: torch.Tensor, target: list[int], allowzero: bool) -> torch.Tensor:
    if not allowzero:  # 0 copies the input's dim
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


@op("Reshape", opsets=(1, 4))
def _reshape_attr(node: NodeSpec):
    target = list(node.attr("shape", ()))
    return lambda rt, x: _reshape(x, target, False)


@op("Reshape", opsets=(5, None), config=(1,))
def _reshape_input(node: NodeSpec):
    allowzero = bool(node.attr("allowzero", 0))
    return lambda rt, x, shape: _reshape(x, ints(shape), allowzero)


@op("Flatten")
def _flatten(node: NodeSpec):
    ax = node.attr("axis", 1)

    def run(rt, x):
        a = axis(ax, x.dim())
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return run


def _squeeze(x, axes):
    if not axes:
        return x.squeeze()
    return torch.squeeze(x, tuple(axis(a, x.dim()) for a in axes))


def _unsqueeze(x, axes):
    rank = x.dim() + len(axes)
    for a in sorted(axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Squeeze", opsets=(1, 12))
def _squeeze_attr(node: NodeSpec):
    axes = list(node.attr("axes", ()))
    return lambda rt, x: _squeeze(x, axes)


@op("Squeeze", opsets=(13, None), config=(1,))
def _squeeze_input(node: NodeSpec):
    return lambda rt, x, axes=None: _squeeze(x, ints(axes))


@op("Unsqueeze", opsets=(1, 12))
def _unsqueeze_attr(node: NodeSpec):
    axes = list(node.attr("axes", ()))
    return lambda rt, x: _unsqueeze(x, axes)


@op("Unsqueeze", opsets=(13, None), config=(1,))
def _unsqueeze_input(node: NodeSpec):
    return lambda rt, x, axes: _unsqueeze(x, ints(axes))


@op("Transpose")
def _transpose(node: NodeSpec):
    perm = node.attr("perm", None)
    return lambda rt, x: x.permute(perm if perm is not None else tuple(range(x.dim() - 1, -1, -1)))


@op("Expand", config=(1,))
def _expand(node: NodeSpec):
    def run(rt, x, shape):
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))

    return run


@op("Concat")
def _concat(node: NodeSpec):
    ax = node.attr("axis", 0)
    return lambda rt, *xs: torch.cat(xs, axis(ax, xs[0].dim()))


def _split_sizes(dim: int, n: int) -> list[int]:
    """Equal parts, the last one smaller when ``dim`` is not a multiple (opset 18)."""
    chunk = -(-dim // n)
    return [chunk] * (n - 1) + [dim - chunk * (n - 1)]


@op("Split", opsets=(1, 12))
def _split_attr(node: NodeSpec):
    ax, sizes, n = node.attr("axis", 0), list(node.attr("split", ())), node.n_outputs

    def run(rt, x, split=None):
        a = axis(ax, x.dim())
        s = ints(split) if split is not None else sizes
        return torch.split(x, s or _split_sizes(x.shape[a], n), a)

    return run


@op("Split", opsets=(13, None), config=(1,))
def _split_input(node: NodeSpec):
    ax, n = node.attr("axis", 0), node.attr("num_outputs", node.n_outputs)

    def run(rt, x, split=None):
        a = axis(ax, x.dim())
        s = ints(split) if split is not None else _split_sizes(x.shape[a], n)
        return torch.split(x, s, a)

    return run


def slice_tensor(x: torch.Tensor, starts, ends, axes, steps) -> torch.Tensor:
    """ONNX Slice: clamped bounds, negative indices and negative steps (taken as a positive
    stride over the same elements, then flipped)."""
    idx = [slice(None)] * x.dim()
    flips = []
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
        a = axis(ax, x.dim())
        n = x.shape[a]
        st = st + n if st < 0 else st
        en = en + n if en < 0 else en
        if sp > 0:
            idx[a] = slice(min(max(st, 0), n), min(max(en, 0), n), sp)
            continue
        st, en = min(max(st, 0), n - 1), min(max(en, -1), n - 1)
        count = max(0, -(-(st - en) // -sp))
        if count == 0:
            idx[a] = slice(0, 0)
        else:
            idx[a] = slice(st - (count - 1) * -sp, st + 1, -sp)
            flips.append(a)
    y = x[tuple(idx)]
    return torch.flip(y, flips) if flips else y


@op("Slice", opsets=(1, 9))
def _slice_attr(node: NodeSpec):
    starts, ends = list(node.attr("starts")), list(node.attr("ends"))
    axes = list(node.attr("axes", ()))
    return lambda rt, x: slice_tensor(x, starts, ends, axes, None)


@op("Slice", opsets=(10, None), config=(1, 2, 3, 4))
def _slice_input(node: NodeSpec):
    def run(rt, x, starts, ends, axes=None, steps=None):
        return slice_tensor(x, ints(starts), ints(ends), ints(axes), ints(steps))

    return run


@op("Gather", weights=(0,))
def _gather(node: NodeSpec):
    ax = node.attr("axis", 0)

    def run(rt, data, idx):
        a = axis(ax, data.dim())
        i = idx.to(torch.int64)
        i = torch.where(i < 0, i + data.shape[a], i)
        out = torch.index_select(data, a, i.reshape(-1))
        return out.reshape(tuple(data.shape[:a]) + tuple(idx.shape) + tuple(data.shape[a + 1 :]))

    return run


@op("GatherElements", weights=(0,))
def _gather_elements(node: NodeSpec):
    ax = node.attr("axis", 0)

    def run(rt, data, idx):
        a = axis(ax, data.dim())
        i = idx.to(torch.int64)
        return torch.gather(data, a, torch.where(i < 0, i + data.shape[a], i))

    return run


@op("GatherND", weights=(0,))
def _gather_nd(node: NodeSpec):
    b = node.attr("batch_dims", 0)

    def run(rt, data, idx):
        k = idx.shape[-1]
        bshape = tuple(data.shape[:b])
        nb = math.prod(bshape)
        d = data.reshape((nb, *data.shape[b:]))
        i = idx.to(torch.int64).reshape(nb, -1, k)
        dims = torch.tensor(data.shape[b : b + k], dtype=torch.int64, device=i.device)
        i = torch.where(i < 0, i + dims, i)
        rows = torch.arange(nb, device=i.device).reshape(nb, 1)
        out = d[(rows, *i.unbind(-1))]
        return out.reshape(bshape + tuple(idx.shape[b:-1]) + tuple(data.shape[b + k :]))

    return run


@op("ScatterND")
def _scatter_nd(node: NodeSpec):
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise node.unsupported(f"reduction={reduction!r}")

    def run(rt, data, idx, updates):
        k = idx.shape[-1]
        i = idx.to(torch.int64).reshape(-1, k)
        dims = torch.tensor(data.shape[:k], dtype=torch.int64, device=i.device)
        i = torch.where(i < 0, i + dims, i)
        vals = updates.reshape((-1, *data.shape[k:]))
        return data.index_put(tuple(i.unbind(-1)), vals, accumulate=reduction == "add")

    return run


@op("ScatterElements", "Scatter")
def _scatter_elements(node: NodeSpec):
    ax = node.attr("axis", 0)
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise node.unsupported(f"reduction={reduction!r}")

    def run(rt, data, idx, updates):
        a = axis(ax, data.dim())
        i = idx.to(torch.int64)
        i = torch.where(i < 0, i + data.shape[a], i)
        if reduction == "add":
            return torch.scatter_add(data, a, i, updates)
        return torch.scatter(data, a, i, updates)

    return run


@op("Where")
def _where(node: NodeSpec):
    return lambda rt, c, x, y: torch.where(c.to(torch.bool), x, y)


@op("Cast")
def _cast(node: NodeSpec):
    to = node.attr("to")
    if to not in ONNX_TO_TORCH:
        raise node.unsupported(f"cast to {ir.DataType(to).name}")
    dt = ONNX_TO_TORCH[to]
    return lambda rt, x: x.to(dt)


@op("CastLike")
def _cast_like(node: NodeSpec):
    return lambda rt, x, like: x.to(like.dtype)


@op("Tile", config=(1,))
def _tile(node: NodeSpec):
    return lambda rt, x, repeats: x.repeat(ints(repeats))


@op("ConstantOfShape", config=(0,))
def _constant_of_shape(node: NodeSpec):
    value = node.attr("value", None)
    arr = np.asarray(value.numpy()).reshape(-1) if value is not None else np.zeros(1, np.float32)
    fill = as_tensor(arr).reshape(())

    def run(rt, shape):
        return fill.expand(ints(shape)).clone()

    return run


@op("Range", config=(0, 1, 2))
def _range(node: NodeSpec):
    def run(rt, start, limit, delta):
        s, lim, d = start.item(), limit.item(), delta.item()
        if not start.is_floating_point():
            return torch.arange(s, lim, d, dtype=start.dtype)
        n = max(math.ceil((lim - s) / d), 0)  # start + i * delta for i < n, as the spec
        return (torch.arange(n, dtype=torch.float64) * d + s).to(start.dtype)

    return run


def _index_pad(x: torch.Tensor, begin: list[int], end: list[int], mode: str) -> torch.Tensor:
    """reflect / edge / wrap padding along any axes, as index maps (negative pads crop)."""
    crop = tuple(
        slice(max(0, -b), x.shape[i] - max(0, -e))
        for i, (b, e) in enumerate(zip(begin, end, strict=True))
    )
    x = x[crop]
    for d, (b, e) in enumerate(zip(begin, end, strict=True)):
        b, e, n = max(b, 0), max(e, 0), x.shape[d]
        if not b and not e:
            continue
        j = torch.arange(-b, n + e)
        if mode == "edge":
            j = j.clamp(0, n - 1)
        elif mode == "wrap":
            j = j.remainder(n)
        else:  # reflect, without repeating the border
            period = max(2 * (n - 1), 1)
            j = j.abs().remainder(period)
            j = torch.where(j >= n, period - j, j)
        x = x.index_select(d, j.to(x.device))
    return x


def _pad(x, pads, axes, mode, value):
    nd = x.dim()
    axes = [axis(a, nd) for a in axes] if axes else list(range(nd))
    begin, end = [0] * nd, [0] * nd
    for j, a in enumerate(axes):
        begin[a], end[a] = pads[j], pads[j + len(axes)]
    if mode == "constant":
        return F.pad(x, _torch_pad(begin, end), value=value)
    return _index_pad(x, begin, end, mode)


def _pad_mode(node: NodeSpec) -> str:
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise node.unsupported(f"mode={mode!r}")
    return mode


@op("Pad", opsets=(2, 10))
def _pad_attr(node: NodeSpec):
    mode, pads, value = _pad_mode(node), list(node.attr("pads")), node.attr("value", 0.0)
    return lambda rt, x: _pad(x, pads, None, mode, value)


@op("Pad", opsets=(11, None), config=(1, 2, 3))
def _pad_input(node: NodeSpec):
    mode = _pad_mode(node)

    def run(rt, x, pads, value=None, axes=None):
        v = value.item() if value is not None and value.numel() else 0
        return _pad(x, ints(pads), ints(axes), mode, v)

    return run


@op("NonZero")
def _nonzero(node: NodeSpec):
    return lambda rt, x: torch.nonzero(x).t().contiguous()


@op("DepthToSpace")
def _depth_to_space(node: NodeSpec):
    bs, mode = node.attr("blocksize"), node.attr("mode", "DCR")

    def run(rt, x):
        b, c, h, w = x.shape
        if mode == "DCR":
            t = x.reshape(b, bs, bs, c // bs**2, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            t = x.reshape(b, c // bs**2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
        return t.reshape(b, c // bs**2, h * bs, w * bs)

    return run


@op("SpaceToDepth")
def _space_to_depth(node: NodeSpec):
    bs = node.attr("blocksize")

    def run(rt, x):
        b, c, h, w = x.shape
        t = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return t.reshape(b, c * bs * bs, h // bs, w // bs)

    return run
