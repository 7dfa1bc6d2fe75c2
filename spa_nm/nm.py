"""N:M fine-grained sparsity on ONNX weight initializers (METHODS.md §2.1).

Φ(W; N, M) keeps the N largest |w| of every block of M consecutive weights along the layer's
reduction axis (the layout sparse tensor cores need): Gemm/MatMul along K, Conv along C_in/g at
each (out, kh, kw), ConvTranspose along C_in. The axis comes from each op's rule. Ties break
deterministically: a stable sort, the lower index wins, so every block has exactly N mask ones
and at most N non-zeros. A layer whose reduction size is not a multiple of M, a weight that is
not a constant initializer, a weight shared with another reader, and an ``--ignore``d layer
are skipped and listed. No torch.
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


def sparsify(model: ir.Model, spec: NMSpec, ignore: tuple[str, ...] = ()) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with N:M-masked weights, and the report."""
    from spa_nm.api import copy_model

    t0 = time.perf_counter()
    work = copy_model(model)
    view = ModelView(work)
    done, skipped = [], []
    zeros = total = 0
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
        mask = nm_mask(arr, axis, spec)
        new = np.where(mask, arr, np.zeros((), arr.dtype)).astype(arr.dtype)
        if producer is None:
            w.const_value = ir.tensor(new, name=w.name)
        else:  # a Constant node (paddle2onnx writes every weight this way)
            set_constant_node(producer, ir.tensor(new, name=w.name))
        nz = int(np.count_nonzero(new))
        zeros += new.size - nz
        total += new.size
        done.append({"node": label, "op": node.op_type, "weight": w.name, "shape": list(arr.shape),
                     "axis": axis, "sparsity": round(1 - nz / new.size, 4)})  # fmt: skip
    skipped += _subgraph_weights(work)
    report = {
        "pattern": str(spec),
        "layers_sparsified": done,
        "layers_skipped": skipped,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "weights_sparsified": total,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return work, report
