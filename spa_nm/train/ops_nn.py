"""Torch kernels for ONNX neural-network ops: Conv, ConvTranspose, pooling, normalizations,
LRN and Dropout (ONNX operator spec; attribute defaults per opset).

Padding: ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` and may be asymmetric;
torch convolutions and pools take one symmetric padding per axis. Symmetric pads go to torch
directly (the fast path); other pads are applied with ``F.pad`` first (zeros for Conv and
AveragePool, -inf for MaxPool) and the output is cut to the size the ONNX formula gives.

BatchNormalization in train mode follows the spec's training formula (ONNX
BatchNormalization-15): batch mean and *population* variance normalise the input, and the running
buffers are updated in place as ``running = running * momentum + batch * (1 - momentum)``
(``momentum`` default 0.9). In eval mode the running statistics are used.

Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

import math

import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch
import torch.nn.functional as F  # noqa: TID253

from spa_nm.train.ops_common import axis
from spa_nm.train.registry import NodeSpec, op

__all__: list[str] = []

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _same_pads(auto_pad: str, sizes, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """SAME_UPPER / SAME_LOWER: output = ceil(in / stride); the odd pixel goes at the end
    (UPPER) or at the beginning (LOWER)."""
    begin, end = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin, end


def _pads(node_pads, auto_pad, sizes, kernel, strides, dilations):
    nd = len(sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(auto_pad, sizes, kernel, strides, dilations)
    if auto_pad == "VALID" or not node_pads:
        return [0] * nd, [0] * nd
    return list(node_pads[:nd]), list(node_pads[nd:])


def _torch_pad(begin, end) -> list[int]:
    """ONNX begin/end lists as F.pad's (last axis first) list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


class _Geometry:
    """Kernel, strides, dilations and pads of a Conv / pool node."""

    def __init__(self, node: NodeSpec, with_dilations: bool = True) -> None:
        self.kernel = node.attr("kernel_shape")
        self.strides = node.attr("strides")
        self.dilations = node.attr("dilations") if with_dilations else None
        self.pads = node.attr("pads")
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()

    def resolve(self, sizes, kernel=None):
        nd = len(sizes)
        k = list(kernel if kernel is not None else self.kernel)
        s = list(self.strides or (1,) * nd)
        d = list(self.dilations or (1,) * nd)
        b, e = _pads(self.pads, self.auto_pad, sizes, k, s, d)
        return k, s, d, b, e


# ---------------------------------------------------------------- convolution


@op("Conv", weights=(1, 2))
def _conv(node: NodeSpec):
    geo, group = _Geometry(node), node.attr("group", 1)

    def run(rt, x, w, b=None):
        nd = w.dim() - 2
        _, s, d, pb, pe = geo.resolve(x.shape[2:], w.shape[2:])
        if pb != pe:
            x, pb = F.pad(x, _torch_pad(pb, pe)), [0] * nd
        return _CONV[nd](x, w, b, s, pb, d, group)

    return run


@op("ConvTranspose", weights=(1, 2))
def _conv_transpose(node: NodeSpec):
    geo, group = _Geometry(node), node.attr("group", 1)
    out_pad, out_shape = node.attr("output_padding"), node.attr("output_shape")

    def run(rt, x, w, b=None):
        nd = w.dim() - 2
        k = list(w.shape[2:])
        s = list(geo.strides or (1,) * nd)
        d = list(geo.dilations or (1,) * nd)
        op_ = list(out_pad or (0,) * nd)
        sizes = list(x.shape[2:])
        if out_shape or geo.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = (
                list(out_shape[-nd:])
                if out_shape
                else [n * st for n, st in zip(sizes, s, strict=True)]
            )
            pb, pe = [], []
            for n, kk, st, dd, o, t in zip(sizes, k, s, d, op_, target, strict=True):
                total = st * (n - 1) + o + (kk - 1) * dd + 1 - t
                if geo.auto_pad == "SAME_UPPER":
                    pb.append(total // 2)
                    pe.append(total - total // 2)
                else:
                    pb.append(total - total // 2)
                    pe.append(total // 2)
        elif geo.auto_pad == "VALID" or not geo.pads:
            pb, pe = [0] * nd, [0] * nd
        else:
            pb, pe = list(geo.pads[:nd]), list(geo.pads[nd:])
        if (
            pb == pe
            and all(p >= 0 for p in pb)
            and all(o < max(st, dd) for o, st, dd in zip(op_, s, d, strict=True))
        ):
            return _CONV_T[nd](x, w, b, s, pb, op_, group, d)
        # general: full transposed conv, then output_padding and pads by (negative) F.pad
        y = _CONV_T[nd](x, w, None, s, 0, 0, group, d)
        y = F.pad(y, _torch_pad([-p for p in pb], [o - p for o, p in zip(op_, pe, strict=True)]))
        return y if b is None else y + b.reshape((1, -1) + (1,) * nd)

    return run


# ---------------------------------------------------------------- pooling


def _pool_out(n, k, s, d, pb, pe, ceil_mode) -> int:
    eff = (k - 1) * d + 1
    if ceil_mode:
        o = -(-(n + pb + pe - eff) // s) + 1
        if (o - 1) * s >= n + pb:  # a window may not start in the end padding
            o -= 1
        return o
    return (n + pb + pe - eff) // s + 1


def _fits_torch(k, d, pb, pe) -> bool:
    """torch pools take symmetric pads of at most half the (effective) kernel."""
    return pb == pe and all(
        p <= ((kk - 1) * dd + 1) // 2 for p, kk, dd in zip(pb, k, d, strict=True)
    )


def _pool_general(x, k, s, d, pb, pe, ceil_mode, value):
    """Pad explicitly (to cover ceil-mode windows too) and return the padded input and the
    output sizes; the caller pools without padding and cuts to those sizes."""
    outs, ext = [], []
    for n, kk, st, dd, b, e in zip(x.shape[2:], k, s, d, pb, pe, strict=True):
        o = _pool_out(n, kk, st, dd, b, e, ceil_mode)
        outs.append(o)
        ext.append(max(e, (o - 1) * st + (kk - 1) * dd + 1 - n - b))
    return F.pad(x, _torch_pad(pb, ext), value=value), outs, ext


def _empty_pool(x, k, s, d, pb, pe, ceil_mode):
    """onnxruntime returns an empty output when a window does not fit; torch raises."""
    outs = [
        _pool_out(n, kk, st, dd, b, e, ceil_mode)
        for n, kk, st, dd, b, e in zip(x.shape[2:], k, s, d, pb, pe, strict=True)
    ]
    if min(outs) > 0:
        return None
    return x.new_zeros((*x.shape[:2], *(max(o, 0) for o in outs)))


def _cut(y, outs):
    idx = (slice(None), slice(None), *(slice(0, o) for o in outs))
    return y[idx]


@op("MaxPool")
def _max_pool(node: NodeSpec):
    geo = _Geometry(node)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    want_idx = node.has_output(1)
    if want_idx:
        nd = len(geo.kernel)
        _, _, d, pb, pe = geo.resolve([1] * nd)
        if (
            node.attr("storage_order", 0)
            or geo.auto_pad not in ("NOTSET", "VALID")
            or not _fits_torch(geo.kernel, d, pb, pe)
        ):
            raise node.unsupported("Indices output with storage_order=1, SAME or asymmetric pads")

    def run(rt, x):
        nd = x.dim() - 2
        k, s, d, pb, pe = geo.resolve(x.shape[2:])
        empty = _empty_pool(x, k, s, d, pb, pe, ceil_mode)
        if empty is not None:
            return (empty, empty.to(torch.int64)) if want_idx else empty
        if _fits_torch(k, d, pb, pe):
            if not want_idx:
                return _MAX_POOL[nd](x, k, s, pb, d, ceil_mode=ceil_mode)
            y, idx = _MAX_POOL[nd](x, k, s, pb, d, ceil_mode=ceil_mode, return_indices=True)
            plane = math.prod(x.shape[2:])
            base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(
                (x.shape[0], x.shape[1]) + (1,) * nd
            )
            return y, idx + base * plane  # ONNX indices run over the whole tensor
        xp, outs, _ = _pool_general(x, k, s, d, pb, pe, ceil_mode, float("-inf"))
        return _cut(_MAX_POOL[nd](xp, k, s, 0, d), outs)

    return run


@op("AveragePool")
def _avg_pool(node: NodeSpec):
    geo = _Geometry(node)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    include = bool(node.attr("count_include_pad", 0))
    if any(v != 1 for v in node.attr("dilations") or ()):
        raise node.unsupported("AveragePool with dilations")

    def run(rt, x):
        nd = x.dim() - 2
        k, s, d, pb, pe = geo.resolve(x.shape[2:])
        empty = _empty_pool(x, k, s, d, pb, pe, ceil_mode)
        if empty is not None:
            return empty
        if _fits_torch(k, d, pb, pe):
            return _AVG_POOL[nd](x, k, s, pb, ceil_mode, include)
        # window sums over the padded input divided by the count of counted cells; both
        # averages carry the same 1/prod(k), which cancels
        xp, outs, ext = _pool_general(x, k, s, d, pb, pe, ceil_mode, 0.0)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if include:  # explicit pads count, the ceil-mode overhang does not
            ones = F.pad(ones, _torch_pad(pb, pe), value=1.0)
            mask = F.pad(ones, _torch_pad([0] * nd, [a - e for a, e in zip(ext, pe, strict=True)]))
        else:
            mask = F.pad(ones, _torch_pad(pb, ext))
        num = _AVG_POOL[nd](xp, k, s, 0)
        den = _AVG_POOL[nd](mask, k, s, 0)
        return _cut(num, outs) / _cut(den, outs)

    return run


@op("GlobalAveragePool")
def _global_avg_pool(node: NodeSpec):
    return lambda rt, x: x.mean(tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(node: NodeSpec):
    return lambda rt, x: torch.amax(x, tuple(range(2, x.dim())), keepdim=True)


# ---------------------------------------------------------------- normalization


@op("BatchNormalization", weights=(1, 2), fixed=(3, 4))
def _batch_norm(node: NodeSpec):
    eps = node.attr("epsilon", 1e-5)
    momentum = node.attr("momentum", 0.9)
    if node.opset < 9 and node.attr("spatial", 1) == 0:
        raise node.unsupported("spatial=0 (per-activation statistics)")
    extra = [node.has_output(i) for i in range(1, 5)]

    def run(rt, x, scale, bias, mean, var):
        if not rt.training:
            y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
            return (y, mean, var, mean, var) if any(extra) else y
        dims = [0, *range(2, x.dim())]
        if scale.dim() == 1 and bias.dim() == 1 and not any(extra):
            # torch's fused kernel normalises with the batch mean and the biased variance, and
            # returns them (as 1 / sqrt(var + eps)) for the running-statistics update
            y, bm, invstd = torch.native_batch_norm(x, scale, bias, None, None, True, 0.0, eps)
            bv = invstd.pow(-2) - eps
        else:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            bv, bm = torch.var_mean(x, dims, correction=0)  # the spec's ReduceVar
            y = (x - bm.reshape(shape)) * torch.rsqrt(bv.reshape(shape) + eps)
            y = y * scale.reshape(shape) + bias.reshape(shape)
        with torch.no_grad():
            if not mean.requires_grad and not var.requires_grad:
                mean.mul_(momentum).add_(bm.detach().to(mean.dtype), alpha=1 - momentum)
                var.mul_(momentum).add_(bv.detach().to(var.dtype), alpha=1 - momentum)
        return (y, mean, var, bm, bv) if any(extra) else y

    return run


@op("InstanceNormalization", weights=(1, 2))
def _instance_norm(node: NodeSpec):
    eps = node.attr("epsilon", 1e-5)
    return lambda rt, x, scale, bias: F.instance_norm(x, None, None, scale, bias, True, 0.0, eps)


@op("LayerNormalization", opsets=(17, None), weights=(1, 2))
def _layer_norm(node: NodeSpec):
    ax, eps = node.attr("axis", -1), node.attr("epsilon", 1e-5)
    stats = node.has_output(1) or node.has_output(2)

    def run(rt, x, scale, bias=None):
        a = axis(ax, x.dim())
        nshape = tuple(x.shape[a:])
        if (
            not stats
            and tuple(scale.shape) == nshape
            and (bias is None or tuple(bias.shape) == nshape)
        ):
            return F.layer_norm(x, nshape, scale, bias, eps)
        dims = tuple(range(a, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv = torch.rsqrt((x - mean).pow(2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv * scale
        if bias is not None:
            y = y + bias
        return y, mean, inv

    return run


@op("GroupNormalization", opsets=(18, None), weights=(1, 2))
def _group_norm(node: NodeSpec):
    eps, groups = node.attr("epsilon", 1e-5), node.attr("num_groups")
    per_group = node.opset < 21  # opset 18: scale and bias have one entry per group

    def run(rt, x, scale, bias):
        if not per_group:
            return F.group_norm(x, groups, scale, bias, eps)
        n = x.shape[0]
        y = F.group_norm(x, groups, None, None, eps).reshape(n, groups, -1)
        y = y * scale.reshape(1, groups, 1) + bias.reshape(1, groups, 1)
        return y.reshape(x.shape)

    return run


@op("LRN")
def _lrn(node: NodeSpec):
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    front = (size - 1) // 2  # the window is [c - floor((size-1)/2), c + ceil((size-1)/2)]
    back = size - 1 - front

    def run(rt, x):
        n, c = x.shape[0], x.shape[1]
        sq = (x * x).reshape(n, 1, c, -1)
        sq = F.pad(sq, (0, 0, front, back))
        total = F.avg_pool2d(sq, (size, 1), stride=1) * size
        return x / (bias + (alpha / size) * total.reshape(x.shape)) ** beta

    return run


# ---------------------------------------------------------------- dropout


def _dropout_run(ratio_attr, want_mask, bool_mask):
    """Identity in eval mode; in train mode inverted dropout (kept entries scaled by
    1 / (1 - ratio)). The mask output is bool from opset 10, the input's type before."""

    def run(rt, x, ratio=None, training_mode=None):
        r = float(ratio.item()) if ratio is not None else ratio_attr
        if not rt.training or r == 0.0:
            if want_mask:  # opset < 10 leaves the inference mask open: onnxruntime gives 0s
                if bool_mask:
                    return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)
                return x, torch.zeros_like(x)
            return x
        if not want_mask:
            return F.dropout(x, r, True)
        mask = torch.rand(x.shape, device=x.device) >= r
        y = x * mask.to(x.dtype) / (1.0 - r)
        return y, mask if bool_mask else mask.to(x.dtype)

    return run


@op("Dropout", opsets=(1, 11))
def _dropout_attr(node: NodeSpec):
    return _dropout_run(node.attr("ratio", 0.5), node.has_output(1), node.opset >= 10)


@op("Dropout", opsets=(12, None), config=(1, 2))
def _dropout(node: NodeSpec):
    return _dropout_run(0.5, node.has_output(1), True)
