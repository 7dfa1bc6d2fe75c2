"""Torch kernels for ONNX Resize (opsets 10-19+) and Upsample (7-9): nearest, linear and
cubic modes, every coordinate transformation mode, sizes or scales, opset-18 ``axes`` and
``keep_aspect_ratio_policy``.

All modes are separable, so the kernel resizes one axis at a time with index maps: nearest
gathers one source index per output position, linear blends two and cubic four (bilinear,
bicubic, ... are the composition over axes). Coordinates are computed in float32 in the order onnxruntime uses
(``(x + 0.5) / scale - 0.5`` for half_pixel), so nearest-mode ties round the same way:

* output size: ``floor(in * scale)`` (float32 product) for scales, ``sizes`` otherwise, and
  the scale then used for coordinates is ``out / in``;
* nearest_mode: round_prefer_floor, round_prefer_ceil (half away from zero), floor, ceil; opset
  <= 10 and Upsample use the old rule (truncate when upsampling, ceil when downsampling);
* linear: the source coordinate is clamped to ``[0, in - 1]`` and blends its two neighbours;
  tf_crop_and_resize writes ``extrapolation_value`` outside the input instead.

* cubic: four taps around ``floor(coordinate)`` weighted by Keys' kernel with
  ``cubic_coeff_a``; out-of-range taps repeat the border, or get weight 0 (renormalised) with
  ``exclude_outside``.

Antialiasing (opset 18) is not implemented (`UnsupportedOpError` at build time).
Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

import numpy as np
import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch

from spa_nm.train.ops_common import axis, floats, ints
from spa_nm.train.registry import NodeSpec, op

__all__: list[str] = []

_MODES = ("nearest", "linear", "cubic")
_CTMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "tf_crop_and_resize",
)
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


class _Resizer:
    def __init__(self, node: NodeSpec, legacy: bool) -> None:
        mode = node.attr("mode", "nearest")
        mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
        if mode not in _MODES:
            raise node.unsupported(f"mode={mode!r}")
        self.mode = mode
        self.ctm = (
            "asymmetric" if legacy else node.attr("coordinate_transformation_mode", "half_pixel")
        )
        if self.ctm not in _CTMS:
            raise node.unsupported(f"coordinate_transformation_mode={self.ctm!r}")
        self.nearest = "simple" if legacy else node.attr("nearest_mode", "round_prefer_floor")
        if self.nearest not in _NEAREST:
            raise node.unsupported(f"nearest_mode={self.nearest!r}")
        if node.attr("antialias", 0):
            raise node.unsupported("antialias=1")
        self.cubic_a = float(node.attr("cubic_coeff_a", -0.75))
        self.exclude_outside = bool(node.attr("exclude_outside", 0))
        self.extrapolation = float(node.attr("extrapolation_value", 0.0))
        self.axes = node.attr("axes", None)
        self.policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if self.policy not in ("stretch", "not_larger", "not_smaller"):
            raise node.unsupported(f"keep_aspect_ratio_policy={self.policy!r}")

    def plan(self, shape, scales, sizes, roi):
        """Per axis: (output length, float32 scale, roi start, roi end)."""
        rank = len(shape)
        axes = [axis(a, rank) for a in self.axes] if self.axes else list(range(rank))
        out = list(shape)
        sc = [np.float32(1.0)] * rank
        if sizes:
            for a, s in zip(axes, sizes, strict=True):
                out[a] = s
                sc[a] = np.float32(s) / np.float32(shape[a]) if shape[a] else np.float32(1.0)
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                common = pick(sc[a] for a in axes)
                for a in axes:
                    sc[a] = common
                    out[a] = int(np.round(common * np.float32(shape[a])))
        else:
            for a, s in zip(axes, scales, strict=True):
                sc[a] = np.float32(s)
                out[a] = int(np.float32(s) * np.float32(shape[a]))
        r0, r1 = [0.0] * rank, [1.0] * rank
        if roi and self.ctm == "tf_crop_and_resize":
            k = len(axes)
            for j, a in enumerate(axes):
                r0[a], r1[a] = roi[j], roi[j + k]
        return out, sc, r0, r1

    def coords(self, n_out: int, n_in: int, scale, r0: float, r1: float) -> torch.Tensor:
        x = torch.arange(n_out, dtype=torch.float32)
        s = torch.tensor(scale, dtype=torch.float32)
        ctm = self.ctm
        if ctm == "asymmetric":
            return x / s
        if ctm == "pytorch_half_pixel":
            return (x + 0.5) / s - 0.5 if n_out > 1 else torch.zeros_like(x)
        if ctm == "tf_half_pixel_for_nn":
            return (x + 0.5) / s
        if ctm == "align_corners":
            return x * float(n_in - 1) / float(n_out - 1) if n_out > 1 else torch.zeros_like(x)
        if ctm == "tf_crop_and_resize":
            if n_out > 1:
                return r0 * (n_in - 1) + (x * (r1 - r0) * (n_in - 1)) / (n_out - 1)
            return torch.full_like(x, 0.5 * (r0 + r1) * (n_in - 1))
        if ctm == "half_pixel_symmetric":
            width = np.float32(scale) * np.float32(n_in)
            adjustment = np.float32(n_out) / width
            offset = np.float32(n_in / 2) * (np.float32(1) - adjustment)
            return (float(offset) + (x.double() + 0.5) / float(scale) - 0.5).float()
        return (x + 0.5) / s - 0.5  # half_pixel

    def nearest_index(self, c: torch.Tensor, n_in: int, scale) -> torch.Tensor:
        m = self.nearest
        if m == "simple":
            idx = torch.ceil(c) if scale < 1 else torch.trunc(c)
        elif m == "floor":
            idx = torch.floor(c)
        elif m == "ceil":
            idx = torch.ceil(c)
        elif m == "round_prefer_ceil":  # half away from zero
            idx = torch.sign(c) * torch.floor(torch.abs(c) + 0.5)
        else:  # round_prefer_floor: halves go down, everything else to the nearest
            half = c == torch.trunc(c) + 0.5
            idx = torch.where(half, torch.floor(c), torch.sign(c) * torch.floor(torch.abs(c) + 0.5))
        return idx.to(torch.int64).clamp(0, n_in - 1)

    def axis_resize(self, x, a, n_out, scale, r0, r1):
        n_in = x.shape[a]
        c = self.coords(n_out, n_in, scale, r0, r1)
        view = [1] * x.dim()
        view[a] = n_out
        if self.mode == "nearest":
            y = x.index_select(a, self.nearest_index(c, n_in, scale).to(x.device))
        elif self.mode == "cubic":
            y = self.cubic(x, a, c, view)
        else:
            cc = c.clamp(0, n_in - 1)
            lo = torch.floor(cc).to(torch.int64).clamp(0, n_in - 1)
            hi = (lo + 1).clamp(max=n_in - 1)
            w = (cc - lo.to(cc.dtype)).to(device=x.device, dtype=x.dtype).reshape(view)
            dev = x.device
            y = x.index_select(a, lo.to(dev)) * (1 - w) + x.index_select(a, hi.to(dev)) * w
        if self.ctm == "tf_crop_and_resize":
            outside = ((c < 0) | (c > n_in - 1)).to(x.device).reshape(view)
            y = torch.where(outside, torch.full_like(y, self.extrapolation), y)
        return y

    def cubic(self, x, a, c, view):
        """Four taps at floor(c) - 1 .. floor(c) + 2 with Keys' kernel (coefficient A); taps
        outside the input repeat the border, or with exclude_outside get weight 0 and the rest
        are renormalised."""
        n_in = x.shape[a]
        base = torch.floor(c)
        t = (c - base).double()
        A = self.cubic_a
        y = None
        weights, taps = [], []
        for k in (-1, 0, 1, 2):
            d = (t - k).abs()
            w = torch.where(
                d <= 1,
                ((A + 2) * d - (A + 3)) * d * d + 1,
                ((A * d - 5 * A) * d + 8 * A) * d - 4 * A,
            )
            idx = base.to(torch.int64) + k
            if self.exclude_outside:
                w = torch.where((idx < 0) | (idx > n_in - 1), torch.zeros_like(w), w)
            weights.append(w)
            taps.append(idx.clamp(0, n_in - 1))
        total = sum(weights) if self.exclude_outside else None
        for w, idx in zip(weights, taps, strict=True):
            if total is not None:
                w = w / total
            w = w.to(device=x.device, dtype=x.dtype).reshape(view)
            term = x.index_select(a, idx.to(x.device)) * w
            y = term if y is None else y + term
        return y

    def __call__(self, x, scales, sizes, roi):
        out, sc, r0, r1 = self.plan(list(x.shape), scales, sizes, roi)
        for a in range(x.dim()):
            identity = out[a] == x.shape[a] and sc[a] == 1 and self.ctm != "tf_crop_and_resize"
            if not identity:
                x = self.axis_resize(x, a, out[a], sc[a], r0[a], r1[a])
        return x


@op("Upsample", opsets=(7, 8))
def _upsample_attr(node: NodeSpec):
    rs, scales = _Resizer(node, legacy=True), floats(np.asarray(node.attr("scales")))
    return lambda rt, x: rs(x, scales, [], [])


@op("Upsample", opsets=(9, None), config=(1,))
def _upsample(node: NodeSpec):
    rs = _Resizer(node, legacy=True)
    return lambda rt, x, scales: rs(x, floats(scales), [], [])


@op("Resize", opsets=(10, 10), config=(1,))
def _resize_10(node: NodeSpec):
    rs = _Resizer(node, legacy=True)
    return lambda rt, x, scales: rs(x, floats(scales), [], [])


@op("Resize", opsets=(11, None), config=(1, 2, 3))
def _resize(node: NodeSpec):
    rs = _Resizer(node, legacy=False)

    def run(rt, x, roi=None, scales=None, sizes=None):
        return rs(x, floats(scales), ints(sizes), floats(roi))

    return run
