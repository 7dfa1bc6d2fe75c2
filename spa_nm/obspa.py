"""OBSPA: group-OBS channel pruning with compensation, without calibration data (METHODS.md §1.7).

**This is OUR reconstruction [R]/[D], not the paper's verified algorithm.** The SPA paper names
OBSPA (train → prune, no fine-tuning, no calibration data) but its derivation is not public;
what follows is group-OBS (Hassibi & Stork 1993; OBC, Frantar & Alistarh 2022) over the coupled
channels of a group, as specified in §1.7.

For every consumer k of a group (a Conv, grouped Conv, Gemm or MatMul that reads the group's
channels through the columns of a constant weight) let W ∈ ℝ^{rows×cols} be its weight in
im2col column order (input channel major, kernel taps inner) and X ∈ ℝ^{cols×n} its inputs:

1. G = XXᵀ/n; with a bias, a constant-1 row is appended to X, so the bias is a column that is
   never removed and that the update re-fits (this replaces the κ fold of §1.4). A consumer that
   can carry a bias but has none (Conv, Gemm) gets one when the update moves it [D].
   H = 2G + λI, λ = damp·mean(diag 2G) (damp = 0.01); P = H⁻¹.
2. Removing unit c, Q = cols_k(c) (one column for Gemm/MatMul, kh·kw for a Conv, H·W after a
   Flatten): ε_k(c) = Σ_r W[r,Q] (P_QQ)⁻¹ W[r,Q]ᵀ (OBS's ½ dropped).
3. ε_G(c) = Σ_k ε_k(c) / tr(W_k G_k W_kᵀ): relative to the layer's output energy ‖W_k X_k‖²/n,
   so layers are commensurate; these are the scores (`SELF_NORMALIZED`: global ranking uses them
   as they are). Producer rows are not compensated: their outputs disappear.
4. Compensation, greedily in at most `MAX_STEPS` batches per group, re-scoring the remaining
   units before each batch (OBC): W ← W − W[:,Q] (P_QQ)⁻¹ P_{Q,:}; W[:,Q] = 0 exactly;
   P ← P − P_{:,Q} (P_QQ)⁻¹ P_{Q,:}. Surgery then deletes the zero columns.

G without data (§1.7 item 5, ``hessian``):
- ``synthetic`` (default, measured: see `DEFAULT_HESSIAN`): random N(0, 1) inputs (random
  token ids for integer inputs) through the dense model on onnxruntime; consumer inputs are read
  by exposing them as graph outputs;
- ``bn``: moments of a BatchNormalization output (z_c ~ N(β_c, γ_c²)), through an optional
  Relu or Clip (clipped-Gaussian moments; Relu gives m = βΨ(α) + |γ|ψ(α),
  s = (β² + γ²)Ψ(α) + β|γ|ψ(α), α = β/|γ|), channels and taps independent:
  G = diag(s − m²) ⊗ I_taps + m̃m̃ᵀ. A consumer not fed that way uses ``synthetic``, and the
  report says so per layer;
- ``data``: a calibration ``.npz`` (arrays by input name, or ``x_train`` / ``x_val`` / a single
  array) through the dense model: not data-free, an upper bound;
- ``identity``: H = I, no bias row, no normalisation: the test oracle of §1.7 item 6 (it selects
  exactly what ``l2`` on consumer columns selects, and only zeroes the removed columns).

Design note: every consumer's column geometry (im2col for Conv, transposes and α/β for Gemm) is
op knowledge that the rules' facts do not describe, so it lives here, in one small table of
per-op adapters (`_ADAPTERS`), rather than in `spa_nm.rules` (a deviation from STYLE.md §2,
kept local so that adding an op touches one function). A consumer without an adapter is not
compensated; a group without any compensable consumer falls back to ``l2`` and says so.
Each layer is compensated on the dense model's inputs (layer-wise OBS, not sequential OBC).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import ConfigError, InputError, SpaNmError
from spa_nm.facts import Blocked, Role
from spa_nm.graph import ChannelGroup, DependencyGraph, node_label

__all__ = [
    "DEFAULT_HESSIAN",
    "HESSIANS",
    "MAX_STEPS",
    "ObspaOptions",
    "ObspaScorer",
    "obs_remove",
]

log = logging.getLogger(__name__)

HESSIANS = ("synthetic", "bn", "data", "identity")
# Measured (tests/test_obspa.py zoo comparison, ratio 0.3, no fine-tuning; numbers in the
# commit message and the report): synthetic beat bn on every model tried, because bn's
# independence assumption ignores the correlations that the compensation feeds on, and most
# exported models fold BatchNorm into the Conv (bn then falls back to synthetic anyway).
DEFAULT_HESSIAN = "synthetic"
MAX_STEPS = 32  # greedy batches per group (one unit per step when fewer units are removed)


@dataclass(frozen=True)
class ObspaOptions:
    """How OBSPA builds its Hessians (METHODS.md §1.7). ``data``: a calibration .npz."""

    hessian: str = DEFAULT_HESSIAN
    data: str | None = None
    damp: float = 0.01
    samples: int = 32  # synthetic/data inputs run through the model
    seed: int = 0
    max_cols: int = 8192  # larger consumers (Hessian > 0.5 GB) are not compensated
    rescore: bool = True  # greedy re-scoring before each batch (False: initial order)

    def __post_init__(self) -> None:
        if self.hessian not in HESSIANS:
            raise ConfigError(
                f"unknown hessian {self.hessian!r}; choose from {', '.join(HESSIANS)}"
            )
        if (self.hessian == "data") != (self.data is not None):
            raise ConfigError("hessian 'data' needs a calibration .npz, and only it takes one")
        if not (self.damp >= 0 and math.isfinite(self.damp)):
            raise ConfigError(f"damp must be a finite number >= 0, got {self.damp}")
        if int(self.samples) < 1:
            raise ConfigError(f"samples must be positive, got {self.samples}")

    @classmethod
    def make(
        cls, hessian: str | None = None, data: str | Path | None = None, **kw: Any
    ) -> ObspaOptions:
        """Options from user input: a calibration file alone means ``hessian="data"``."""
        if hessian is None:
            hessian = "data" if data is not None else DEFAULT_HESSIAN
        return cls(hessian, None if data is None else str(data), **kw)


# -- the OBS algebra (numpy only) -----------------------------------------------------------


def _inverse_hessian(g: np.ndarray, damp: float) -> np.ndarray:
    """P = (2G + λI)⁻¹, λ = damp·mean(diag 2G); more damping if 2G + λI is not positive."""
    h = 2.0 * g
    lam = damp * float(np.mean(np.diag(h))) if h.size else 0.0
    if not lam > 0:
        lam = max(damp, 1e-12)
    eye = np.eye(h.shape[0])
    for _ in range(8):
        try:
            c = np.linalg.cholesky(h + lam * eye)
            ci = np.linalg.inv(c)
            return ci.T @ ci
        except np.linalg.LinAlgError:
            lam *= 10.0
    raise SpaNmError("OBSPA: the Hessian stays singular after damping")


def _unit_errors(w: np.ndarray, p: np.ndarray, cols: list[np.ndarray]) -> np.ndarray:
    """ε(Q) = Σ_r W[r,Q] (P_QQ)⁻¹ W[r,Q]ᵀ for each column set Q of ``cols``."""
    out = np.zeros(len(cols))
    if not cols:
        return out
    sizes = {c.size for c in cols}
    if len(sizes) == 1 and 0 not in sizes:
        q = np.stack(cols)  # [U, q]
        pqq = p[q[:, :, None], q[:, None, :]]  # [U, q, q]
        wq = np.moveaxis(w[:, q], 0, -1)  # [U, q, rows]
        sol = _solve(pqq, wq)
        return np.einsum("uqr,uqr->u", wq, sol)
    for k, c in enumerate(cols):
        if c.size:
            wq = w[:, c].T
            out[k] = float(np.sum(wq * _solve(p[np.ix_(c, c)], wq)))
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a) @ b


def _remove(w: np.ndarray, p: np.ndarray, q: np.ndarray) -> None:
    """Remove columns ``q`` with OBS compensation, in place: W and the downdated P."""
    pq = p[q, :]
    coef = _solve(p[np.ix_(q, q)], pq)  # (P_QQ)⁻¹ P_{Q,:}
    w -= w[:, q] @ coef
    w[:, q] = 0.0
    p -= p[:, q] @ coef
    p[q, :] = 0.0
    p[:, q] = 0.0


def obs_remove(w: np.ndarray, g: np.ndarray, cols: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """W [rows, cols] with columns ``cols`` removed and the rest compensated for inputs of
    second moment ``g`` = XXᵀ/n (METHODS.md §1.7 item 4, all at once). Returns a new array."""
    w = np.array(w, dtype=np.float64)
    p = _inverse_hessian(np.asarray(g, dtype=np.float64), damp)
    _remove(w, p, np.asarray(cols, dtype=np.int64))
    return w


# -- consumer adapters (the op knowledge of this module) ------------------------------------


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


def _attr(node: ir.Node, key: str, default: Any) -> Any:
    a = node.attributes.get(key)
    if a is None:
        return default
    v = a.value
    return v.decode() if isinstance(v, bytes) else v


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


# -- second moments G = XXᵀ/n of the consumers' inputs ---------------------------------------


def _std_normal_cdf(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))


def _std_normal_pdf(t: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(
            np.isfinite(t), np.exp(-0.5 * np.minimum(t * t, 1e300)) / math.sqrt(2 * math.pi), 0.0
        )


def clipped_moments(mu, sigma, lo: float = -math.inf, hi: float = math.inf):
    """E[y] and E[y²] for y = clip(z, lo, hi), z ~ N(mu, sigma²) (per channel)."""
    mu = np.asarray(mu, dtype=np.float64)
    sig = np.abs(np.asarray(sigma, dtype=np.float64))
    safe = np.where(sig > 0, sig, 1.0)
    a, b = (lo - mu) / safe, (hi - mu) / safe
    pa, pb = _std_normal_cdf(a), _std_normal_cdf(b)
    da, db = _std_normal_pdf(a), _std_normal_pdf(b)
    mass = pb - pa
    m = mu * mass + sig * (da - db)
    s = (mu * mu + sig * sig) * mass
    if math.isfinite(lo):
        m, s = m + lo * pa, s + sig * (mu + lo) * da + lo * lo * pa
    if math.isfinite(hi):
        m, s = m + hi * (1 - pb), s - sig * (mu + hi) * db + hi * hi * (1 - pb)
    y = np.clip(mu, lo, hi)
    return np.where(sig > 0, m, y), np.where(sig > 0, s, y * y)


def _bn_moments(view, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(m, s) per channel when ``name`` is BatchNormalization → [Relu | Clip] (§1.7 5(b))."""
    lo, hi = -math.inf, math.inf
    v = view.values.get(name)
    node = v.producer() if v is not None else None
    skip = ("Identity", "Dropout")
    while node is not None and node.op_type in skip:
        node = node.inputs[0].producer()
    if node is not None and node.op_type == "Relu":
        lo, node = 0.0, node.inputs[0].producer()
    elif node is not None and node.op_type == "Clip":
        bounds = []
        for k, key in ((1, "min"), (2, "max")):
            if len(node.inputs) > k and node.inputs[k] is not None:
                c = view.const(node.inputs[k].name)
                if c is None:
                    return None
                bounds.append(float(c))
            else:
                bounds.append(_attr(node, key, None))
        lo = -math.inf if bounds[0] is None else float(bounds[0])
        hi = math.inf if bounds[1] is None else float(bounds[1])
        node = node.inputs[0].producer()
    while node is not None and node.op_type in skip:
        node = node.inputs[0].producer()
    if node is None or node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    gamma, beta = (view.const(node.inputs[k].name) for k in (1, 2))
    if gamma is None or beta is None:
        return None
    return clipped_moments(beta, gamma, lo, hi)


def _bn_gram(lay: _Layer, moments, ch: slice) -> tuple[np.ndarray, np.ndarray]:
    """G = diag(s − m²) ⊗ I_taps + m̃m̃ᵀ and the mean m̃ (independent channels and taps)."""
    m, s = (np.asarray(a, dtype=np.float64)[ch] for a in moments)
    mt = np.repeat(m, lay.taps)
    return np.diag(np.repeat(np.maximum(s - m * m, 0.0), lay.taps)) + np.outer(mt, mt), mt


_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def _load_calibration(path: str, inputs) -> dict[str, np.ndarray]:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as e:
        raise InputError(f"{p}: no such file") from e
    except Exception as e:
        raise InputError(f"{p}: not a readable .npz file ({e})") from e
    names = [i.name for i in inputs]
    if all(n in arrays for n in names):
        return {n: arrays[n] for n in names}
    if len(names) == 1:
        for key in ("x_train", "x", "x_val"):
            if key in arrays:
                return {names[0]: arrays[key]}
        if len(arrays) == 1:
            return {names[0]: next(iter(arrays.values()))}
    raise InputError(f"{p}: no arrays for the model inputs {names} (keys: {sorted(arrays)})")


class _Capture:
    """Runs the dense model on onnxruntime and accumulates XXᵀ, ΣX and n per consumer block."""

    def __init__(self, dg: DependencyGraph, opts: ObspaOptions) -> None:
        self.dg, self.opts = dg, opts

    def run(self, layers: list[_Layer]) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
        import onnx

        from spa_nm.io import to_proto_with_data
        from spa_nm.runtime import _ort

        ort = _ort()
        proto = to_proto_with_data(self.dg.view.model)
        have = {o.name for o in proto.graph.output}
        names = sorted({lay.input for lay in layers})
        for n in names:
            if n not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=n))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(
                proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise SpaNmError(
                f"OBSPA: onnxruntime cannot run the model ({str(e).splitlines()[0][:200]})"
            ) from e
        acc: dict[int, list[list]] = {}
        for feeds in self._batches(sess):
            outs = dict(zip(names, sess.run(names, feeds), strict=True))
            for k, lay in enumerate(layers):
                xa = np.asarray(outs[lay.input], dtype=np.float32)
                slots = acc.setdefault(k, [[0.0, 0.0, 0] for _ in lay.blocks])
                for (_, ch), a in zip(lay.blocks, slots, strict=True):
                    x = lay.patches(xa, ch)
                    a[0] = a[0] + (x @ x.T).astype(np.float64)  # float32 product: 2x faster
                    a[1] = a[1] + x.sum(axis=1, dtype=np.float64)
                    a[2] += x.shape[1]
        return {k: [(g / max(n, 1), s / max(n, 1)) for g, s, n in v] for k, v in acc.items()}

    def _batches(self, sess):
        inputs = sess.get_inputs()
        want = int(self.opts.samples)
        if self.opts.hessian == "data":
            arrays = _load_calibration(self.opts.data, inputs)
            n = min(len(a) for a in arrays.values())
            lead = inputs[0].shape[0]
            b = lead if isinstance(lead, int) and lead > 0 else 16
            if n < b:
                raise InputError(f"{self.opts.data}: {n} samples, the model takes batches of {b}")
            for start in range(0, min(n, max(want, b)) - b + 1, b):
                yield {
                    i.name: np.asarray(arrays[i.name][start : start + b]).astype(
                        _NP.get(i.type, np.float32)
                    )
                    for i in inputs
                }
            return
        rng = np.random.default_rng(self.opts.seed)
        lead = inputs[0].shape[0] if inputs and inputs[0].shape else 1
        b = lead if isinstance(lead, int) and lead > 0 else 8
        vocab = self._vocab()
        for _ in range(max(1, math.ceil(want / b))):
            feeds = {}
            for i in inputs:
                shape = [
                    d if isinstance(d, int) and d > 0 else (b if j == 0 else 32)
                    for j, d in enumerate(i.shape)
                ]
                dt = _NP.get(i.type, np.float32)
                if np.issubdtype(dt, np.floating):
                    feeds[i.name] = rng.standard_normal(shape).astype(dt)
                elif dt is np.bool_:
                    feeds[i.name] = rng.random(shape) > 0.5
                else:
                    feeds[i.name] = rng.integers(0, vocab.get(i.name, 8), size=shape).astype(dt)
            yield feeds

    def _vocab(self) -> dict[str, int]:
        """Integer inputs used as Gather indices into a constant table: ids below its rows."""
        out = {}
        view = self.dg.view
        for name in view.graph_inputs:
            for c in view.consumers(name):
                if (
                    c.op_type == "Gather"
                    and len(c.inputs) > 1
                    and c.inputs[1] is not None
                    and c.inputs[1].name == name
                ):
                    table = view.const(c.inputs[0].name)
                    if table is not None and int(_attr(c, "axis", 0)) == 0:
                        out[name] = min(out.get(name, table.shape[0]), table.shape[0])
        return out


# -- per-layer OBS state, the scorer and the compensation ------------------------------------


def _energy(w: np.ndarray, g: np.ndarray) -> float:
    """tr(W G Wᵀ) = ‖WX‖²/n."""
    return float(np.sum((w @ g) * w))


@dataclass
class _State:
    """A consumer during pruning: its augmented weight [W | b], P per block, and G."""

    layer: _Layer
    hessian: str
    w: np.ndarray
    w0: np.ndarray
    ps: list[np.ndarray]
    gs: list[np.ndarray]
    norm: float  # tr(W₀ G W₀ᵀ): the layer's output energy (1 for the identity oracle)
    cols_of: dict[int, np.ndarray]
    removed: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def build(cls, lay: _Layer, hessian: str, grams, damp: float) -> _State:
        cols = lay.w.shape[1]
        cols_of = {int(u): np.nonzero(lay.col_unit == u)[0] for u in np.unique(lay.col_unit)}
        if hessian == "identity":  # §1.7 item 6: H = I, no bias column, no normalisation
            eye = np.eye(cols)
            return cls(lay, hessian, lay.w.copy(), lay.w.copy(), [eye.copy() for _ in lay.blocks],
                       [eye for _ in lay.blocks], 1.0, cols_of)  # fmt: skip
        bias = lay.bias_vec is not None
        w = np.concatenate([lay.w, lay.bias_vec[:, None]], axis=1) if bias else lay.w.copy()
        ps, gs, norm = [], [], 0.0
        for (rows, _), (g, mean) in zip(lay.blocks, grams, strict=True):
            if bias:
                g = np.block([[g, mean[:, None]], [mean[None, :], np.ones((1, 1))]])
            gs.append(g)
            ps.append(_inverse_hessian(g, damp))
            wb = w[rows]
            norm += _energy(wb, g)
        return cls(lay, hessian, w, w.copy(), ps, gs, norm if norm > 0 else 1.0, cols_of)

    def errors(self, units: np.ndarray) -> np.ndarray:
        """ε_k(c) / tr(W G Wᵀ) for each unit position in ``units`` (0 where it has no column)."""
        out = np.zeros(units.size)
        has = np.array([int(u) in self.cols_of for u in units], dtype=bool)
        if not has.any():
            return out
        cols = [self.cols_of[int(u)] for u in units[has]]
        for (rows, _), p in zip(self.layer.blocks, self.ps, strict=True):
            out[has] += _unit_errors(self.w[rows], p, cols)
        return out / self.norm

    def remove(self, units) -> None:
        q = [self.cols_of[int(u)] for u in units if int(u) in self.cols_of]
        if not q:
            return
        q = np.concatenate(q)
        self.removed.append(q)
        for (rows, _), p in zip(self.layer.blocks, self.ps, strict=True):
            wb = self.w[rows]
            _remove(wb, p, q)
            self.w[rows] = wb

    def report(self, gid: int) -> dict[str, Any]:
        q = np.concatenate(self.removed) if self.removed else np.zeros(0, dtype=np.int64)
        d = self.w0 - self.w
        z = np.zeros_like(self.w0)
        z[:, q] = self.w0[:, q]
        e = z_e = base = 0.0
        for (rows, _), g in zip(self.layer.blocks, self.gs, strict=True):
            e += _energy(d[rows], g)
            z_e += _energy(z[rows], g)
            base += _energy(self.w0[rows], g)
        base = base if base > 0 else 1.0
        return {"node": self.layer.label, "op": self.layer.op, "group": gid, "hessian": self.hessian,
                "columns": int(self.layer.w.shape[1]), "columns_removed": int(q.size),
                "relative_error": e / base, "relative_error_uncompensated": z_e / base}  # fmt: skip


class ObspaScorer:
    """The ``obspa`` criterion (see the module docstring): scores groups, then ``finish``
    re-selects greedily and writes the compensated weights into the plan."""

    self_normalized = True

    def __init__(self, dg: DependencyGraph, options: ObspaOptions | None = None) -> None:
        self.dg = dg
        self.opts = options if options is not None else ObspaOptions()
        self._states: dict[int, list[_State]] | None = None
        self._skipped: dict[int, list[str]] = {}

    def _prepare(self) -> dict[int, list[_State]]:
        if self._states is not None:
            return self._states
        opts, view = self.opts, self.dg.view
        layers: dict[int, list[_Layer]] = {}
        for g in self.dg.prunable_groups:
            layers[g.id], self._skipped[g.id] = consumer_layers(self.dg, g, opts.max_cols)
        grams: dict[int, tuple[str, list]] = {}
        need: list[_Layer] = []
        for lays in layers.values():
            for lay in lays:
                if opts.hessian == "identity":
                    grams[id(lay)] = ("identity", [])
                    continue
                mom = _bn_moments(view, lay.input) if opts.hessian == "bn" else None
                if (
                    mom is not None
                    and lay.channel_axis == 1
                    and len(mom[0]) == (view.shape(lay.input) or (0, 0))[1]
                ):
                    grams[id(lay)] = ("bn", [_bn_gram(lay, mom, ch) for _, ch in lay.blocks])
                else:
                    need.append(lay)
        if need:
            got = _Capture(self.dg, opts).run(need)
            fallback = (
                "synthetic (no BatchNormalization feeds it)"
                if opts.hessian == "bn"
                else opts.hessian
            )
            for k, lay in enumerate(need):
                grams[id(lay)] = (fallback, got[k])
        self._states = {
            gid: [
                _State.build(lay, grams[id(lay)][0], grams[id(lay)][1], opts.damp) for lay in lays
            ]
            for gid, lays in layers.items()
        }
        return self._states

    def __call__(self, group: ChannelGroup) -> tuple[np.ndarray, str | None]:
        from spa_nm.importance import l2

        states = self._prepare().get(group.id, [])
        skipped = self._skipped.get(group.id, [])
        if not states:
            s = l2(self.dg, group)[0]
            mean = float(np.mean(s)) if s.size else 0.0
            why = "; ".join(skipped) or "no consumer reads it through a constant weight"
            return (
                s / mean if mean > 0 else s
            ), f"no compensable consumer ({why}): fell back to l2"
        pos = np.arange(group.size)
        score = sum(st.errors(pos) for st in states)
        note = f"not compensated: {'; '.join(skipped)}" if skipped else None
        return np.asarray(score, dtype=np.float64), note

    def finish(self, plan) -> None:
        """Greedy re-selection with downdates, then the compensated weights into ``plan``."""
        states = self._prepare()
        dg, opts = self.dg, self.opts
        details: dict[str, Any] = {"hessian": opts.hessian, "damp": opts.damp, "samples": opts.samples,
                                   "layers": [], "fallback_groups": []}  # fmt: skip
        if opts.hessian == "data":
            details["data"] = opts.data
        for gid in sorted(plan.removed):
            sts = states.get(gid, [])
            g = dg.groups[gid]
            if not sts:
                details["fallback_groups"].append(gid)
                continue
            chosen = np.searchsorted(g.units, plan.removed[gid])
            if opts.rescore:
                chosen = self._greedy(g, sts, chosen.size)
            else:
                for st in sts:
                    st.remove(chosen)
            plan.removed[gid] = np.sort(g.units[chosen])
            for st in sts:
                details["layers"].append(st.report(gid))
                self._write(st, plan)
        plan.details = details

    def _greedy(self, g: ChannelGroup, sts: list[_State], k: int) -> np.ndarray:
        """k units, lowest re-scored ε first, in at most MAX_STEPS batches; never empties a slot."""
        slots_of: list[list[int]] = [[] for _ in range(g.size)]
        left = []
        for j, s in enumerate(g.slots):
            units = np.unique(np.searchsorted(g.units, self.dg.elements(s)))
            left.append(units.size)
            for u in units:
                slots_of[int(u)].append(j)
        remaining = np.ones(g.size, dtype=bool)
        chosen: list[int] = []
        steps = min(k, MAX_STEPS)
        sizes = [k // steps + (1 if t < k % steps else 0) for t in range(steps)] if k else []
        for size in sizes:
            cand = np.nonzero(remaining)[0]
            score = sum(st.errors(cand) for st in sts)
            picked = []
            for u in cand[np.lexsort((cand, score))]:
                if all(left[j] > 1 for j in slots_of[int(u)]):
                    picked.append(int(u))
                    for j in slots_of[int(u)]:
                        left[j] -= 1
                    if len(picked) == size:
                        break
            if not picked:
                break
            for st in sts:
                st.remove(picked)
            remaining[picked] = False
            chosen.extend(picked)
        return np.array(sorted(chosen), dtype=np.int64)

    def _write(self, st: _State, plan) -> None:
        lay = st.layer
        if not st.removed:
            return
        cols = lay.w.shape[1]
        dtype = self.dg.view.const(lay.weight).dtype
        plan.updates[lay.weight] = np.asarray(lay.to_stored(st.w[:, :cols]), dtype=dtype)
        if st.w.shape[1] == cols or lay.bias_store is None:
            return
        b = lay.bias_store(st.w[:, cols])
        if lay.bias is not None:
            plan.updates[lay.bias] = np.asarray(b, dtype=self.dg.view.const(lay.bias).dtype)
        elif lay.can_create_bias and np.any(b != 0):
            plan.new_biases[lay.index] = np.asarray(b, dtype=dtype)
