"""Second moments G = XXᵀ/n of the consumers' inputs (METHODS.md §1.7 item 5): BatchNorm
moments through Relu/Clip (clipped Gaussians), and synthetic or calibration inputs run through
the dense model on onnxruntime."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spa_nm.errors import InputError, SpaNmError
from spa_nm.runtime import np_dtype, random_input
from spa_nm.graph import DependencyGraph
from spa_nm.obspa._layers import _attr, _Layer
from spa_nm.obspa._options import ObspaOptions


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




def _load_calibration(path: str, inputs) -> dict[str, np.ndarray]:
    from spa_nm.io import read_npz

    p = Path(path)
    arrays = read_npz(p)
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
                        np_dtype(i.type)
                    )
                    for i in inputs
                }
            return
        rng = np.random.default_rng(self.opts.seed)
        lead = inputs[0].shape[0] if inputs and inputs[0].shape else 1
        b = lead if isinstance(lead, int) and lead > 0 else 8
        vocab = self._vocab()
        for _ in range(max(1, math.ceil(want / b))):
            yield {i.name: random_input(rng, i, b, 32, vocab.get(i.name, 8)) for i in inputs}

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
