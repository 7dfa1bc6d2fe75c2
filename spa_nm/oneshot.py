"""Calibrated one-shot N:M sparsity: Wanda and SparseGPT on ONNX weights (docs/nm_oneshot.md).

Every layer is read as ``Y = W X`` with ``W ∈ R^{C_out × C_in}`` and calibration activations
``X ∈ R^{tokens × C_in}`` (one row per token, pixel or sample):

- Gemm / MatMul: ``C_in`` is K; X is the input A flattened to ``[-1, K]`` (``Aᵀ`` for transA).
- Conv ``W [C_out, C_in/g, k...]``: the im2col view, per group, with its ``C_in/g · prod(k)``
  columns in (tap, channel) order, so that the N:M blocks along C_in/g at each tap (the layout
  of `spa_nm.nm`) are contiguous in the sweep; pads, strides, dilations and auto_pad as the op.
- ConvTranspose ``W [C_in, C_out/g, k...]``: rows are the (output channel, tap) pairs, X the
  input pixels ``[N·S, C_in/g]`` (the products before the overlap-add).

Methods:

- **Wanda** (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models", ICLR 2024): score ``S_ij = |W_ij| · ‖X_{:,j}‖₂``, compared within one output row; the N
  largest of every block of M consecutive inputs are kept, no weight changes. For a Conv the
  norm of input channel c (over every pixel of the activation) is shared by its k·k taps.
- **SparseGPT** (Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned
  in One-Shot", ICML 2023): ``H = 2XᵀX + λI``, ``λ = 0.01·mean(diag H)``; dead inputs
  (``H_jj = 0``) get ``H_jj = 1`` and ``W_{:,j} = 0``; U is the upper Cholesky factor of ``H⁻¹``.
  Columns are swept in blocks of B = 128: at every column j with ``j mod M = 0`` each row prunes
  the M−N weights of columns j…j+M−1 with the smallest ``w²/U_jj²``; the error of each column,
  ``(w_j − q_j)/U_jj``, updates the later columns of the block through ``U[j, j+1:]`` and, once
  per block, the later blocks. Kept weights change (they compensate).

Activations come from onnxruntime running a copy of the model with the layers' inputs added as
graph outputs, on ``data`` (arrays by graph input name, `spa_nm.io.read_npz`) or on synthetic
inputs (`spa_nm.runtime.random_input`; the report says which). Per layer only ``XᵀX`` and the
squared input norms are kept, accumulated over batches; the layers of one pass hold at most
``max_gram_bytes`` of them, more passes run when they do not fit. Default: every layer sees the
dense model's activations (one pass); ``sequential=True`` runs the layers in dependency order,
each on the outputs of its already-sparsified predecessors.

``reconstruction_error`` of a layer is ``‖WX − ŴX‖_F / ‖WX‖_F`` on its calibration activations,
computed from the Gram matrix: ``tr(D XᵀX Dᵀ) / tr(W XᵀX Wᵀ)`` with ``D = W − Ŵ`` (the bias
cancels; it is left out of the denominator). A layer with more than ``max_columns`` im2col
columns gets no Gram matrix: its error is not measured, and SparseGPT gives way to Wanda there.
No torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import ConfigError, InputError, SpaNmError
from spa_nm.nm import NMSpec, check_nm, nm_mask
from spa_nm.view import attr_value as _attr

__all__ = ["METHODS", "Calibration", "calibrated_sparsify", "sparsegpt_prune", "wanda_mask"]

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Calibration:
    """Where the calibration activations come from and how the one-shot methods run.

    ``data``: a .npz path or a mapping of arrays by graph input name (the leading axis is the
    sample axis); None: synthetic inputs from ``seed``. ``samples``: how many samples to use at
    most. ``batch``: samples per onnxruntime run where the model's batch dim is symbolic (a fixed
    batch dim is used as it is).
    """

    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    samples: int = 128
    seed: int = 0
    sequential: bool = False
    batch: int = 8
    block_size: int = 128
    damp: float = 0.01
    max_columns: int = 8192
    max_gram_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for key in ("samples", "batch", "block_size", "max_columns", "max_gram_bytes"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"calibration {key.replace('_', ' ')} must be a positive integer, got {v!r}")
        if not (isinstance(self.damp, (int, float)) and 0 < float(self.damp) < 1e6):
            raise ConfigError(f"damping must be positive, got {self.damp!r}")


# -- the layers as matrices --------------------------------------------------------------------




@dataclass
class _Layer:
    """One target weight as matrices ``[rows, cols]`` (one per group) and its activation."""

    target: Any  # spa_nm.nm._Target
    x: str  # the activation name
    groups: int
    cols: int  # columns per group matrix
    channels: int  # input channels (Wanda norms)
    mats: Callable[[np.ndarray], list[np.ndarray]]
    unmats: Callable[[list[np.ndarray]], np.ndarray]
    feats: Callable[[np.ndarray, int], np.ndarray]  # activation, group -> [tokens, cols]
    chan_sq: Callable[[np.ndarray], tuple[np.ndarray, int]]  # activation -> (Σx² per channel, tokens)
    scale: Callable[[np.ndarray], np.ndarray]  # per-channel norms -> broadcastable to the weight
    key: tuple = ()  # layers with the same key see the same X: their statistics are shared
    level: int = 0
    # accumulated statistics
    sq: np.ndarray | None = None
    tokens: int = 0
    grams: list[np.ndarray] | None = None
    gram_note: str | None = None

    @property
    def gram_bytes(self) -> int:
        return self.groups * self.cols * self.cols * 8


def _layer(t, spec: NMSpec) -> _Layer | str:
    """The matrix view of target ``t``, or why it has none (the layer then takes magnitude)."""
    node, arr, axis = t.node, t.arr, t.axis
    x = node.inputs[0] if node.inputs else None
    if x is None or not x.name:
        return "the layer input has no name"
    if x.const_value is not None or (x.producer() is not None and x.producer().op_type == "Constant"):
        return "the layer input is a constant, not an activation"
    op = node.op_type
    if op in ("Gemm", "MatMul"):
        if arr.ndim != 2:
            return f"{op} weight of rank {arr.ndim} (batched): not a matrix"
        k = arr.shape[axis]
        trans_a = op == "Gemm" and int(_attr(node, "transA", 0))
        if axis == 1:  # Gemm transB=1: B is [N, K] = W
            mats, unmats = (lambda a: [a]), (lambda ms: ms[0])
            scale = lambda n: n[None, :]  # noqa: E731
        else:  # B is [K, N]: W = Bᵀ
            mats, unmats = (lambda a: [a.T]), (lambda ms: ms[0].T)
            scale = lambda n: n[:, None]  # noqa: E731

        def flat(xa: np.ndarray) -> np.ndarray:
            xa = xa.T if trans_a else xa
            return xa.reshape(-1, k)

        def chan_sq(xa: np.ndarray) -> tuple[np.ndarray, int]:
            f = flat(xa)
            return np.einsum("ij,ij->j", f, f, dtype=np.float64), f.shape[0]

        return _Layer(t, x.name, 1, k, k, mats, unmats, lambda xa, g: flat(xa), chan_sq, scale,
                      key=("mm", x.name, k, bool(trans_a)))  # fmt: skip
    if op == "Conv":
        o, cg, ks = arr.shape[0], arr.shape[1], tuple(arr.shape[2:])
        g = int(_attr(node, "group", 1))
        if g < 1 or o % g:
            return f"Conv group {g} does not divide {o} output channels"
        nd, taps, po = len(ks), math.prod(ks), o // g
        strides = list(_attr(node, "strides", [1] * nd))
        dil = list(_attr(node, "dilations", [1] * nd))
        pads0 = list(_attr(node, "pads", [0] * (2 * nd)))
        auto = _attr(node, "auto_pad", "NOTSET")

        def pads_for(xa: np.ndarray) -> list[int]:
            if auto == "VALID":
                return [0] * (2 * nd)
            if auto not in ("SAME_UPPER", "SAME_LOWER"):
                return pads0
            pads = [0] * (2 * nd)
            for a in range(nd):
                s = xa.shape[2 + a]
                win = (ks[a] - 1) * dil[a] + 1
                total = max((math.ceil(s / strides[a]) - 1) * strides[a] + win - s, 0)
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads[a], pads[a + nd] = lo, total - lo
            return pads

        def mats(a: np.ndarray) -> list[np.ndarray]:
            return [a[j * po : (j + 1) * po].reshape(po, cg, taps).transpose(0, 2, 1).reshape(po, taps * cg)
                    for j in range(g)]  # fmt: skip

        def unmats(ms: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([m.reshape(po, taps, cg).transpose(0, 2, 1).reshape(po, cg, *ks) for m in ms])

        def feats(xa: np.ndarray, j: int) -> np.ndarray:
            return im2col(xa[:, j * cg : (j + 1) * cg], ks, strides, dil, pads_for(xa))

        def chan_sq(xa: np.ndarray) -> tuple[np.ndarray, int]:
            f = np.moveaxis(xa, 1, -1).reshape(-1, xa.shape[1])
            return np.einsum("ij,ij->j", f, f, dtype=np.float64), f.shape[0]

        def scale(n: np.ndarray) -> np.ndarray:  # channel j·cg + c for the rows of group j
            per = np.repeat(n.reshape(g, cg), po, axis=0)  # [o, cg]
            return per.reshape(o, cg, *([1] * nd))

        return _Layer(t, x.name, g, taps * cg, g * cg, mats, unmats, feats, chan_sq, scale,
                      key=("conv", x.name, g, cg, ks, tuple(strides), tuple(dil), tuple(pads0), auto))  # fmt: skip
    if op == "ConvTranspose":
        ci, cog, ks = arr.shape[0], arr.shape[1], tuple(arr.shape[2:])
        g = int(_attr(node, "group", 1))
        if g < 1 or ci % g:
            return f"ConvTranspose group {g} does not divide {ci} input channels"
        cgi = ci // g
        if cgi % spec.m:
            return f"ConvTranspose: {cgi} input channels per group, not a multiple of {spec.m}"
        nd = len(ks)

        def mats(a: np.ndarray) -> list[np.ndarray]:
            return [a[j * cgi : (j + 1) * cgi].reshape(cgi, -1).T for j in range(g)]

        def unmats(ms: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([m.T.reshape(cgi, cog, *ks) for m in ms])

        def feats(xa: np.ndarray, j: int) -> np.ndarray:
            return np.moveaxis(xa[:, j * cgi : (j + 1) * cgi], 1, -1).reshape(-1, cgi)

        def chan_sq(xa: np.ndarray) -> tuple[np.ndarray, int]:
            f = np.moveaxis(xa, 1, -1).reshape(-1, xa.shape[1])
            return np.einsum("ij,ij->j", f, f, dtype=np.float64), f.shape[0]

        return _Layer(t, x.name, g, cgi, ci, mats, unmats, feats, chan_sq,
                      lambda n: n.reshape(ci, *([1] * (nd + 1))), key=("convT", x.name, g, cgi))  # fmt: skip
    return f"no calibrated view of {op}"


def im2col(x: np.ndarray, k, strides, dil, pads) -> np.ndarray:
    """``[N, C, *S]`` -> ``[N·prod(out), prod(k)·C]``, zero padded, columns in (tap, channel)
    order (taps in the C order of the kernel dims)."""
    nd = len(k)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + nd]) for a in range(nd)])
    win = [(k[a] - 1) * dil[a] + 1 for a in range(nd)]
    v = np.lib.stride_tricks.sliding_window_view(xp, win, axis=tuple(range(2, 2 + nd)))
    v = v[(slice(None), slice(None), *(slice(None, None, s) for s in strides), *(slice(None, None, d) for d in dil))]
    order = (0, *range(2, 2 + nd), *range(2 + nd, 2 + 2 * nd), 1)  # [N, *out, *k, C]
    return v.transpose(order).reshape(-1, math.prod(k) * x.shape[1])


# -- the algorithms ----------------------------------------------------------------------------


def wanda_mask(w: np.ndarray, axis: int, norms: np.ndarray, spec: NMSpec) -> np.ndarray:
    """Wanda's N:M mask: per block of M along ``axis``, the N largest ``|w| · norm``
    (``norms`` broadcast to ``w``'s shape, the input norms ‖X_j‖₂); ties keep the lower index."""
    return nm_mask(np.abs(w.astype(np.float64)) * norms, axis, spec)


def sparsegpt_prune(
    w: np.ndarray, gram: np.ndarray, spec: NMSpec, block_size: int = 128, damp: float = 0.01
) -> tuple[np.ndarray, float]:
    """SparseGPT on ``w [rows, cols]`` with ``gram = XᵀX [cols, cols]``: the N:M-sparse,
    compensated weights (every block of M consecutive columns of a row has M−N zeros) and the
    dampening factor that made ``H`` positive definite (``damp``, or ten times more per retry)."""
    n, m = spec.n, spec.m
    rows, cols = w.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of {m}")
    W = np.array(w, dtype=np.float64)
    H = 2.0 * np.array(gram, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    mean_diag = float(np.mean(np.diag(H)))
    U = None
    for tries in range(6):
        lam = damp * 10**tries
        try:
            Hd = H + lam * mean_diag * np.eye(cols)
            # H = V Vᵀ with V upper (the Cholesky factor of H in reversed order), so
            # H⁻¹ = V⁻ᵀV⁻¹ and U = V⁻¹ is the upper Cholesky factor of H⁻¹: no second factorization
            V = np.linalg.cholesky(Hd[::-1, ::-1])[::-1, ::-1]
            U = np.triu(np.linalg.inv(V))
            if np.all(np.isfinite(U)) and np.all(np.diag(U) > 0):
                break
        except np.linalg.LinAlgError:
            U = None
    if U is None:
        raise SpaNmError("SparseGPT: the Hessian stays singular after dampening")
    bs = m * max(1, block_size // m)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diag(U1)
        pruned = np.zeros(W1.shape, dtype=bool)
        for i in range(i2 - i1):
            if i % m == 0:  # i1 is a multiple of m: the block j…j+M−1 of the layer's columns
                score = W1[:, i : i + m] ** 2 / d1[i : i + m] ** 2
                order = np.argsort(-score, axis=1, kind="stable")  # ties: the lower index stays
                np.put_along_axis(pruned[:, i : i + m], order[:, n:], True, axis=1)
            col = W1[:, i]
            q = np.where(pruned[:, i], 0.0, col)
            err = (col - q) / d1[i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Q1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W, lam


# -- calibration -------------------------------------------------------------------------------


def _inputs(sess, model: ir.Model) -> list:
    """The session inputs the caller must feed (an IR < 4 initializer listed as an input is not)."""
    inits = set(model.graph.initializers)
    return [i for i in sess.get_inputs() if i.name not in inits]


def _load_data(data, inputs) -> dict[str, np.ndarray]:
    from spa_nm.io import read_npz

    where = str(data) if not isinstance(data, Mapping) else "calibration data"
    arrays = dict(data) if isinstance(data, Mapping) else read_npz(data)
    names = [i.name for i in inputs]
    if all(n in arrays for n in names):
        return {n: np.asarray(arrays[n]) for n in names}
    if len(names) == 1:
        for key in ("x", "x_train", "x_val"):
            if key in arrays:
                return {names[0]: np.asarray(arrays[key])}
        if len(arrays) == 1:
            return {names[0]: np.asarray(next(iter(arrays.values())))}
    raise InputError(f"{where}: no arrays for the model inputs {names} (keys: {sorted(arrays)})")


class _Feeder:
    """The calibration batches: the same ones on every pass."""

    def __init__(self, model: ir.Model, calib: Calibration, sess) -> None:
        from spa_nm.runtime import np_dtype

        self.calib = calib
        self.inputs = _inputs(sess, model)
        lead = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        self.fixed = isinstance(lead, int) and lead > 0
        self.dtypes = {i.name: np_dtype(i.type) for i in self.inputs}
        self.vocab = _vocab(model)
        if calib.data is not None:
            self.source = "data"
            self.arrays = _load_data(calib.data, self.inputs)
            avail = min((len(a) if a.ndim else 0) for a in self.arrays.values()) if self.arrays else 0
            self.b = lead if self.fixed else min(calib.batch, max(avail, 1))
            n = min(avail, calib.samples)
            if n < self.b:
                where = calib.data if not isinstance(calib.data, Mapping) else "calibration data"
                raise InputError(f"{where}: {n} samples, the model takes batches of {self.b}")
            self.samples = n - n % self.b if self.fixed else n
        else:
            self.source = "synthetic"
            self.arrays = None
            self.b = lead if self.fixed else calib.batch
            self.samples = self.b * max(1, math.ceil(calib.samples / self.b)) if self.fixed else calib.samples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from spa_nm.runtime import random_input

        if self.arrays is not None:
            for s in range(0, self.samples, self.b):
                e = min(s + self.b, self.samples)
                yield {i.name: np.asarray(self.arrays[i.name][s:e]).astype(self.dtypes[i.name]) for i in self.inputs}
            return
        rng = np.random.default_rng(self.calib.seed)
        for s in range(0, self.samples, self.b):
            b = min(self.b, self.samples - s)
            yield {i.name: random_input(rng, i, b, 32, self.vocab.get(i.name, 8)) for i in self.inputs}


def _vocab(model: ir.Model) -> dict[str, int]:
    """Integer inputs used as Gather indices into a constant table: synthetic ids below its rows."""
    out: dict[str, int] = {}
    for v in model.graph.inputs:
        for node in v.consumers():
            if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[1] is v and int(_attr(node, "axis", 0)) == 0:
                table = node.inputs[0]
                shape = table.shape if table is not None else None
                if shape is not None and len(shape) and isinstance(shape[0], int):
                    out[v.name] = min(out.get(v.name, shape[0]), shape[0])
    return out


def _session(proto, names: list[str]):
    import onnx

    from spa_nm.runtime import _ort

    ort = _ort()
    keep = len(proto.graph.output)
    have = {o.name for o in proto.graph.output}
    for name in names:
        if name not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise SpaNmError(f"calibration: onnxruntime cannot run the model ({str(e).splitlines()[0][:200]})") from e
    finally:
        del proto.graph.output[keep:]


_CHUNK_BYTES = 64 << 20  # im2col rows are built this many bytes at a time


def _collect(sess, names: list[str], layers: list[_Layer], feeder: _Feeder) -> None:
    """One pass over the calibration batches: Σx² per input channel and XᵀX for ``layers``
    (``names``: their activations that are session outputs; the others are graph inputs).
    Layers with the same ``key`` (Q/K/V projections of one input) share one set."""
    uniq: dict[tuple, _Layer] = {}
    for lay in layers:
        uniq.setdefault(lay.key, lay)
    for lay in uniq.values():
        lay.sq, lay.tokens = np.zeros(lay.channels), 0
        lay.grams = [np.zeros((lay.cols, lay.cols)) for _ in range(lay.groups)] if lay.gram_note is None else None
    for feeds in feeder:
        try:
            outs = dict(zip(names, sess.run(names, feeds), strict=True)) if names else {}
        except Exception as e:  # data of the wrong shape or type for the model
            raise InputError(f"calibration: onnxruntime cannot run the model on these inputs "
                             f"({str(e).splitlines()[0][:200]})") from e  # fmt: skip
        outs.update(feeds)
        for lay in uniq.values():
            xa = np.asarray(outs[lay.x], dtype=np.float32)
            sq, tok = lay.chan_sq(xa)
            lay.sq += sq
            lay.tokens += tok
            if lay.grams is None:
                continue
            # im2col copies every pixel prod(k) times: a few samples at a time
            step = xa.shape[0]
            if lay.target.node.op_type == "Conv":
                step = max(1, _CHUNK_BYTES // max(1, 4 * lay.cols * math.prod(xa.shape[2:])))
            for j in range(lay.groups):
                for s in range(0, xa.shape[0], step):
                    f = lay.feats(xa[s : s + step] if step < xa.shape[0] else xa, j)
                    lay.grams[j] += (f.T @ f).astype(np.float64)
    for lay in layers:
        first = uniq[lay.key]
        lay.sq, lay.tokens, lay.grams = first.sq, first.tokens, first.grams


# -- the pipeline ------------------------------------------------------------------------------


def _levels(view, layers: list[_Layer]) -> None:
    """``level``: how many layers, at most, lie between the graph inputs and this layer's input
    (a layer at level k reads only activations of layers below k)."""
    by_node = {id(lay.target.node): lay for lay in layers}
    depth: dict[str, int] = {}
    for node in view.nodes:
        d = max((depth.get(v.name, 0) for v in node.inputs if v is not None), default=0)
        lay = by_node.get(id(node))
        if lay is not None:
            lay.level = depth.get(lay.x, 0)
            d = max(d, lay.level + 1)
        for v in node.outputs:
            depth[v.name] = d


def _passes(layers: list[_Layer], calib: Calibration) -> list[list[_Layer]]:
    """Layers per pass: by level when sequential, then split so a pass holds at most
    ``max_gram_bytes`` of Gram matrices (a layer larger than that alone)."""
    if calib.sequential:
        stages: dict[int, list[_Layer]] = {}
        for lay in layers:
            stages.setdefault(lay.level, []).append(lay)
        groups = [stages[k] for k in sorted(stages)]
    else:
        groups = [layers]
    out = []
    for grp in groups:
        cur, size, keys = [], 0, set()
        for lay in sorted(grp, key=lambda lay: str(lay.key)):  # one input's layers together
            b = 0 if lay.gram_note or lay.key in keys else lay.gram_bytes
            if cur and b and size + b > calib.max_gram_bytes:
                out.append(cur)
                cur, size, keys = [], 0, set()
            cur.append(lay)
            keys.add(lay.key)
            size += b
        if cur:
            out.append(cur)
    return out


def _error(lay: _Layer, before: np.ndarray, after: np.ndarray) -> float | None:
    if lay.grams is None:
        return None
    num = den = 0.0
    for w, wh, g in zip(lay.mats(before.astype(np.float64)), lay.mats(after.astype(np.float64)), lay.grams, strict=True):
        d = w - wh
        num += float(np.sum((d @ g) * d))
        den += float(np.sum((w @ g) * w))
    if den <= 0:
        return 0.0 if num <= 0 else None
    return math.sqrt(max(num, 0.0) / den)


def calibrated_sparsify(
    work: ir.Model,
    targets: list,
    spec: NMSpec,
    method: str,
    calib: Calibration,
    store: Callable[[Any, np.ndarray], None],
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Sparsify ``targets`` (`spa_nm.nm._Target`, distinct weights) of ``work`` in place with
    ``method`` on calibration activations, writing each new weight with ``store``.

    Returns per-target report fields (by target index) and the ``calibration`` report."""
    from spa_nm.graph import ModelView
    from spa_nm.io import to_proto_with_data

    if method not in METHODS:
        raise ConfigError(f"unknown N:M method {method!r}; choose from {', '.join(METHODS)}")
    proto = to_proto_with_data(work)  # the dense model, before any weight changes
    info: dict[int, dict[str, Any]] = {}
    layers: list[_Layer] = []
    index: dict[int, int] = {}
    for k, t in enumerate(targets):
        lay = _layer(t, spec) if not t.shared else f"weight {t.value.name} is read by several layers"
        if isinstance(lay, str):  # no matrix view: the magnitude mask, said so
            new = np.where(nm_mask(t.arr, t.axis, spec), t.arr, np.zeros((), t.arr.dtype)).astype(t.arr.dtype)
            store(t, new)
            info[k] = {"method": "magnitude", "reconstruction_error": None, "note": f"{lay}: magnitude mask"}
            continue
        if lay.cols > calib.max_columns:
            lay.gram_note = f"{lay.cols} input columns > {calib.max_columns}: no XᵀX collected"
        index[id(lay)] = k
        layers.append(lay)
    _levels(ModelView(work), layers)
    graph_inputs = {v.name for v in work.graph.inputs}
    feeder = None
    passes = _passes(layers, calib)
    for p, group in enumerate(passes):
        if calib.sequential and p:
            proto = to_proto_with_data(work)  # the predecessors' new weights
        names = sorted({lay.x for lay in group if lay.x not in graph_inputs})
        sess = _session(proto, names)
        if feeder is None:
            feeder = _Feeder(work, calib, sess)
        _collect(sess, names, group, feeder)
        for lay in group:
            t = lay.target
            k = index[id(lay)]
            entry: dict[str, Any] = {"method": method, "tokens": int(lay.tokens)}
            use = method
            if use == "sparsegpt" and lay.grams is None:
                use = "wanda"
                entry["method"] = "wanda"
                entry["note"] = f"{lay.gram_note}: Wanda instead of SparseGPT"
            elif lay.gram_note:
                entry["note"] = lay.gram_note
            arr = t.arr
            if use == "magnitude":
                new = np.where(nm_mask(arr, t.axis, spec), arr, 0)
            elif use == "wanda":
                norms = np.sqrt(lay.sq)
                new = np.where(wanda_mask(arr, t.axis, np.asarray(lay.scale(norms)), spec), arr, 0)
            else:
                ms, damps = [], []
                for w, g in zip(lay.mats(arr), lay.grams, strict=True):
                    wn, lam = sparsegpt_prune(w, g, spec, calib.block_size, calib.damp)
                    ms.append(wn)
                    damps.append(lam)
                new = lay.unmats(ms)
                entry["damp"] = max(damps)
            new = np.asarray(new).astype(arr.dtype)
            if not check_nm(new, t.axis, spec):  # a layout bug, never a silent dense weight
                raise SpaNmError(f"{t.label}: {use} produced a weight that is not {spec} along axis {t.axis}")
            store(t, new)
            err = _error(lay, arr, new)
            entry["reconstruction_error"] = None if err is None else round(err, 6)
            info[k] = entry
            lay.grams = None  # free the pass's memory
    rep = {
        "source": feeder.source if feeder else ("synthetic" if calib.data is None else "data"),
        "samples": int(feeder.samples) if feeder else 0,  # no layer needed activations
        "variant": "sequential" if calib.sequential else "dense",
        "passes": len(passes),
    }
    if method == "sparsegpt":
        rep["block_size"] = calib.block_size
        rep["damp"] = calib.damp
    return info, rep
