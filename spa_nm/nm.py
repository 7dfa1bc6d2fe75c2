"""N:M fine-grained sparsity on ONNX weight initializers (METHODS.md §2.1).

Φ(W; N, M) keeps the N largest |w| of every block of M consecutive weights along the layer's
reduction axis (the layout sparse tensor cores need): Gemm/MatMul along K, Conv along C_in/g at
each (out, kh, kw), ConvTranspose along C_in. The axis comes from each op's rule. Ties break
deterministically: a stable sort, the lower index wins, so every block has exactly N mask ones
and at most N non-zeros. A layer whose reduction size is not a multiple of M, a weight that is
not a constant initializer, a weight shared with another reader, and an ``--ignore``d layer
are skipped and listed. No torch.

That is ``method="magnitude"``. ``"wanda"`` and ``"sparsegpt"`` choose the kept weights (and,
for SparseGPT, update them) from calibration activations: `spa_nm.oneshot`, docs/nm_oneshot.md.
The layers, the axis and the skip reasons are the same for every method.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import onnx_ir as ir
from spa_nm.errors import ConfigError
from spa_nm.graph import ModelView, node_label
from spa_nm.rules import RuleContext, lookup, nm_axis_of
from spa_nm.surgery import set_constant_node

__all__ = ["NMSpec", "check_nm", "nm_mask", "sparsify"]

_MAX_M = 1024


@dataclass(frozen=True, slots=True)
class NMSpec:
    """At most ``n`` non-zeros per block of ``m`` along the reduction axis."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 1 <= self.n < self.m <= _MAX_M:
            raise ConfigError(f"bad N:M pattern {self.n}:{self.m}: need 1 <= N < M <= {_MAX_M}")

    @classmethod
    def parse(cls, text: str) -> NMSpec:
        """``"2:4"`` -> NMSpec(2, 4); anything else is a ConfigError."""
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"bad N:M pattern {text!r}: expected two integers like 2:4")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def nm_mask(w: np.ndarray, axis: int, spec: NMSpec) -> np.ndarray:
    """Boolean mask: the N largest |w| of each block of M consecutive entries along ``axis``."""
    if w.shape[axis] % spec.m:
        raise ValueError(f"reduction size {w.shape[axis]} is not a multiple of {spec.m}")
    moved = np.moveaxis(np.abs(w), axis, -1)
    blocks = moved.reshape(-1, spec.m)
    keep = np.argsort(-blocks, axis=1, kind="stable")[:, : spec.n]
    mask = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, axis)


def check_nm(w: np.ndarray, axis: int, spec: NMSpec) -> bool:
    """Every block of M along ``axis`` has at most N non-zeros."""
    if w.shape[axis] % spec.m:
        return False
    blocks = np.moveaxis(w, axis, -1).reshape(-1, spec.m)
    return bool(np.all(np.count_nonzero(blocks, axis=1) <= spec.n))


def _subgraph_weights(model: ir.Model) -> list[dict[str, str]]:
    """Layers inside If/Loop/Scan bodies: left dense, each listed with the reason."""
    out = []
    for node in model.graph:
        for attr in node.attributes.values():
            graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else (
                list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
            )
            for sub in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    opset = model.opset_imports.get(inner.domain, model.opset_imports.get("", 13))
                    entry = lookup(inner.domain, inner.op_type, opset)
                    if entry is not None and entry.nm_axis is not None:
                        out.append({
                            "node": inner.name or inner.op_type, "op": inner.op_type,
                            "reason": f"inside the {node.op_type} {node.name or ''} body: left dense",
                        })  # fmt: skip
    return out


@dataclass
class _Target:
    """One weight to sparsify: its reader, the value, the reduction axis and its array."""

    label: str
    node: ir.Node
    value: ir.Value
    axis: int
    arr: np.ndarray
    producer: ir.Node | None  # the Constant node holding it (None: an initializer)
    shared: bool = False  # read by more than one N:M layer (same axis)


def _store(t: _Target, new: np.ndarray) -> None:
    if t.producer is None:
        t.value.const_value = ir.tensor(new, name=t.value.name)
    else:  # a Constant node (paddle2onnx writes every weight this way)
        set_constant_node(t.producer, ir.tensor(new, name=t.value.name))


def _targets(view: ModelView, spec: NMSpec, ignore: tuple[str, ...]) -> tuple[list[_Target], list[dict[str, str]]]:
    """Every N:M layer weight that can be sparsified (one entry per reader), and the skipped
    layers with their reasons."""
    targets: list[_Target] = []
    skipped: list[dict[str, str]] = []
    readers: dict[str, set[tuple[int, int] | None]] = {}
    plans = []
    for i, node in enumerate(view.nodes):
        ctx = RuleContext(view, node, {})
        where = nm_axis_of(node, ctx)
        label = node_label(node, i)
        if where is None:
            continue
        k, axis = where
        w = node.inputs[k] if k < len(node.inputs) else None
        if w is None:
            continue
        plans.append((label, node, w, axis))
        readers.setdefault(w.name, set()).add((id(node), axis))
    for label, node, w, axis in plans:
        def skip(reason: str, label=label, node=node) -> None:
            skipped.append({"node": label, "op": node.op_type, "reason": reason})

        if any(fnmatch.fnmatchcase(label, p) for p in ignore):
            skip("ignored by --ignore")
            continue
        arr = view.const(w.name) if view.is_param(w.name) else None
        producer = w.producer()
        if arr is None or (producer is not None and producer.op_type != "Constant"):
            # computed (a Cast of an fp16 table, a DequantizeLinear): masking the result
            # would change no stored tensor, masking the source another op's input
            skip("weight is computed, not a constant tensor")
            continue
        if arr.dtype.kind != "f":
            skip(f"weight {w.name} is {arr.dtype}, not floating point")
            continue
        if len(w.uses()) != len(readers[w.name]) or len({a for _, a in readers[w.name]}) > 1:
            skip(f"weight {w.name} is shared with another reader")
            continue
        if arr.shape[axis] % spec.m:
            skip(f"reduction size {arr.shape[axis]} is not a multiple of {spec.m}")
            continue
        targets.append(_Target(label, node, w, axis, arr, producer, len(readers[w.name]) > 1))
    return targets, skipped


def sparsify(
    model: ir.Model,
    spec: NMSpec,
    ignore: tuple[str, ...] = (),
    method: str = "magnitude",
    calibration: Any = None,
) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with N:M-sparse weights, and the report.

    ``method``: ``"magnitude"`` (the N largest |w| per block, no data), ``"wanda"`` or
    ``"sparsegpt"`` (calibrated, `spa_nm.oneshot`; docs/nm_oneshot.md). ``calibration``: a
    `spa_nm.oneshot.Calibration` (default: synthetic inputs). Magnitude with calibration data
    also reports each layer's reconstruction error on it.
    """
    from spa_nm.api import copy_model

    if method not in ("magnitude", "wanda", "sparsegpt"):
        raise ConfigError(f"unknown N:M method {method!r}; choose from magnitude, wanda, sparsegpt")
    t0 = time.perf_counter()
    work = copy_model(model)
    view = ModelView(work)
    targets, skipped = _targets(view, spec, ignore)
    calibrated = method != "magnitude" or getattr(calibration, "data", None) is not None
    info: dict[int, dict[str, Any]] = {}
    calib_report = None
    final: dict[str, np.ndarray] = {}

    def store(t: _Target, new: np.ndarray) -> None:
        _store(t, new)
        final[t.value.name] = new

    if calibrated and targets:
        from spa_nm.oneshot import Calibration, calibrated_sparsify

        first: dict[str, int] = {}  # a shared weight is sparsified once, for its first reader
        distinct = [t for k, t in enumerate(targets) if first.setdefault(t.value.name, k) == k]
        got, calib_report = calibrated_sparsify(
            work, distinct, spec, method, calibration or Calibration(), store
        )
        for k, t in enumerate(distinct):
            info[first[t.value.name]] = got[k]
    else:
        for t in targets:
            mask = nm_mask(t.arr, t.axis, spec)
            store(t, np.where(mask, t.arr, np.zeros((), t.arr.dtype)).astype(t.arr.dtype))
    done = []
    zeros = total = 0
    for k, t in enumerate(targets):
        new = final[t.value.name]
        nz = int(np.count_nonzero(new))
        zeros += new.size - nz
        total += new.size
        entry = {"node": t.label, "op": t.node.op_type, "weight": t.value.name, "shape": list(t.arr.shape),
                 "axis": t.axis, "sparsity": round(1 - nz / new.size, 4)}  # fmt: skip
        entry.update(info.get(k, {}))
        done.append(entry)
    skipped += _subgraph_weights(work)
    report = {
        "pattern": str(spec),
        "method": method,
        "layers_sparsified": done,
        "layers_skipped": skipped,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "weights_sparsified": total,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    if calib_report is not None:
        report["calibration"] = calib_report
        errs = [e["reconstruction_error"] for e in done if e.get("reconstruction_error") is not None]
        report["reconstruction_error"] = {
            "mean": round(float(np.mean(errs)), 6) if errs else None,
            "max": round(float(np.max(errs)), 6) if errs else None,
            "layers_measured": len(errs),
        }
    report["seconds"] = round(time.perf_counter() - t0, 4)
    return work, report
