"""Consumer adapters, the op knowledge of OBSPA: each Conv (im2col), Gemm or MatMul that reads a
group's channels becomes an OBS problem on its effective weight matrix (METHODS.md §1.7)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from spa_nm.facts import Blocked, Role
from spa_nm.graph import ChannelGroup, DependencyGraph, node_label
from spa_nm.view import attr_value as _attr


@dataclass
class _Layer:
    """One consumer of a group, as an OBS problem on its effective weight matrix."""

    index: int  # node index in the view
    label: str
    op: str
    weight: str
    input: str
    w: np.ndarray  # effective [rows, cols] (float64)
    blocks: list[tuple[np.ndarray, slice]]  # (rows, input channels) per conv-group
    col_unit: np.ndarray  # [cols] position in group.units
    to_stored: Callable[[np.ndarray], np.ndarray]  # effective matrix -> stored weight
    patches: Callable[[np.ndarray, slice], np.ndarray]  # activation, channels -> X [cols, n]
    taps: int = 1
    channel_axis: int = 1  # the activation axis read through the columns
    bias: str | None = None
    bias_vec: np.ndarray | None = None  # effective per-row bias; None: no bias column
    bias_store: Callable[[np.ndarray], np.ndarray] | None = None
    can_create_bias: bool = False




def _conv(dg: DependencyGraph, i: int, node: ir.Node, p, group: ChannelGroup) -> _Layer | str:
    view = dg.view
    x, wname = node.inputs[0].name, node.inputs[1].name
    w = np.asarray(view.const(wname), dtype=np.float64)
    xs = view.shape(x)
    g = int(_attr(node, "group", 1))
    if w.ndim < 3 or xs is None or len(xs) != w.ndim or not isinstance(xs[1], int):
        return "Conv input shape is unknown"
    o, cg, k = w.shape[0], w.shape[1], w.shape[2:]
    nd, taps = len(k), math.prod(k)
    strides = list(_attr(node, "strides", [1] * nd))
    dil = list(_attr(node, "dilations", [1] * nd))
    pads = list(_attr(node, "pads", [0] * (2 * nd)))
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if not all(isinstance(d, int) for d in xs[2:]):
            return "Conv with auto_pad SAME on a dynamic input"
        pads = [0] * (2 * nd)
        for a in range(nd):
            win = (k[a] - 1) * dil[a] + 1
            total = max((math.ceil(xs[2 + a] / strides[a]) - 1) * strides[a] + win - xs[2 + a], 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[a], pads[a + nd] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    pos = np.searchsorted(group.units, dg.elements(p.param_slot))
    per_out = o // g
    blocks = [
        (np.arange(j * per_out, (j + 1) * per_out), slice(j * cg, (j + 1) * cg)) for j in range(g)
    ]

    def patches(xa: np.ndarray, ch: slice) -> np.ndarray:
        return _im2col(xa[:, ch], k, strides, dil, pads)

    lay = _Layer(i, "", "Conv", wname, x, w.reshape(o, cg * taps), blocks, np.repeat(pos, taps),
                 lambda m: m.reshape(w.shape), patches, taps)  # fmt: skip
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None:
        bv = view.const(b.name)
        if bv is None or bv.size != o:
            return "Conv bias is not a constant vector"
        lay.bias, lay.bias_vec = b.name, np.asarray(bv, dtype=np.float64).reshape(o)
        lay.bias_store = lambda v: v.reshape(bv.shape)
    else:
        lay.bias_vec, lay.can_create_bias = np.zeros(o), True
        lay.bias_store = lambda v: v
    return lay


def _im2col(x: np.ndarray, k, strides, dil, pads) -> np.ndarray:
    """[N, C, *S] -> [C·prod(k), N·prod(out)] with zero padding (channel major, taps inner)."""
    nd = len(k)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + nd]) for a in range(nd)])
    win = [(k[a] - 1) * dil[a] + 1 for a in range(nd)]
    v = np.lib.stride_tricks.sliding_window_view(xp, win, axis=tuple(range(2, 2 + nd)))
    sl = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in strides),
        *(slice(None, None, d) for d in dil),
    )
    v = v[sl]  # [N, C, *out, *k]
    order = (1, *range(2 + nd, 2 + 2 * nd), 0, *range(2, 2 + nd))
    return v.transpose(order).reshape(x.shape[1] * math.prod(k), -1)


def _gemm(dg: DependencyGraph, i: int, node: ir.Node, p, group: ChannelGroup) -> _Layer | str:
    view = dg.view
    a, bname = node.inputs[0].name, node.inputs[1].name
    bw = np.asarray(view.const(bname), dtype=np.float64)
    ta, tb = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    if alpha == 0 or bw.ndim != 2:
        return "Gemm with alpha = 0"
    w = alpha * (bw if tb else bw.T)  # [N, K]
    n = w.shape[0]
    pos = np.searchsorted(group.units, dg.elements(p.param_slot))
    lay = _Layer(i, "", "Gemm", bname, a, w, [(np.arange(n), slice(None))], pos,
                 lambda m: (m / alpha) if tb else (m / alpha).T,
                 (lambda xa, ch: xa) if ta else (lambda xa, ch: xa.T), channel_axis=0 if ta else 1)  # fmt: skip
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if beta == 0:
        return lay  # C is multiplied away: no bias column
    if c is None:
        lay.bias_vec, lay.can_create_bias = np.zeros(n), True
        lay.bias_store = lambda v: v / beta
        return lay
    cv = view.const(c.name)
    if cv is not None and cv.size == n and n > 1 and cv.shape[-1] == n:
        lay.bias, lay.bias_vec = c.name, beta * np.asarray(cv, dtype=np.float64).reshape(n)
        lay.bias_store = lambda v: (v / beta).reshape(cv.shape)
    return lay  # a broadcast C stays as it is: no bias column


def _matmul(dg: DependencyGraph, i: int, node: ir.Node, p, group: ChannelGroup) -> _Layer | str:
    view = dg.view
    a, bname = node.inputs[0].name, node.inputs[1].name
    bw = view.const(bname)
    if bw is None or bw.ndim != 2:
        return "MatMul weight is not a 2-D matrix"
    w = np.asarray(bw, dtype=np.float64).T  # [N, K]
    pos = np.searchsorted(group.units, dg.elements(p.param_slot))
    kdim = w.shape[1]
    rank = len(view.shape(a) or (0, 0))
    return _Layer(i, "", "MatMul", bname, a, w, [(np.arange(w.shape[0]), slice(None))], pos,
                  lambda m: m.T, lambda xa, ch: xa.reshape(-1, kdim).T, channel_axis=rank - 1)  # fmt: skip


_ADAPTERS: dict[str, Callable[..., _Layer | str]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
}


def consumer_layers(dg: DependencyGraph, group: ChannelGroup, max_cols: int = 8192):
    """The group's consumers as OBS problems, and a reason for each one that is not."""
    owner = {}
    for i, f in dg.facts.items():
        if not isinstance(f, Blocked):
            for q in f.params:
                owner[id(q)] = i
    layers: list[_Layer] = []
    skipped: list[str] = []
    seen = set()
    for p in group.params:
        if p.role != Role.WEIGHT_IN or id(p) not in owner or owner[id(p)] in seen:
            continue
        i = owner[id(p)]
        seen.add(i)
        node = dg.view.nodes[i]
        label = node_label(node, i)
        fn = _ADAPTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        res = fn(dg, i, node, p, group) if fn else f"no OBS adapter for {node.op_type}"
        if isinstance(res, _Layer) and res.w.shape[1] + 1 > max_cols:
            res = f"{res.w.shape[1]} input columns (max {max_cols})"
        if isinstance(res, str):
            skipped.append(f"{label}: {res}")
            continue
        res.label = label
        layers.append(res)
    return layers, skipped
