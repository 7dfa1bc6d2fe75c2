"""Public oracles for tests (METHODS.md §6): zero the group, ratio 0 is the identity.

Needs onnxruntime (the ``cpu`` or ``gpu`` extra). Comparisons run with every ORT graph
optimization off, so ORT's own fusions cannot hide a wrong graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import onnx_ir as ir
from spa_nm.api import PruneResult, copy_model
from spa_nm.facts import Role
from spa_nm.io import to_proto_with_data
from spa_nm.runtime import as_array
from spa_nm.graph import ModelView
from spa_nm.view import _constant_node_value
from spa_nm.surgery import set_constant_node

__all__ = ["assert_prune_equivalent", "random_feeds", "run", "zeroed_copy"]

_KEEP_ROLES = (Role.WEIGHT_IN, Role.NORM_STAT, Role.DIVISOR)

_NP = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.BOOL: np.bool_,
}


def random_feeds(model: ir.Model, seed: int = 0, batch: int = 2, size: int = 32) -> dict[str, np.ndarray]:
    """Random inputs; a symbolic (or -1) first dim becomes ``batch``, other symbolic dims
    ``size`` (dynamic image sides); a named symbol gets one size in every input."""
    rng = np.random.default_rng(seed)
    feeds = {}
    named: dict[str, int] = {}  # a symbol keeps the size it got where first seen
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        shape = []
        for k, d in enumerate(v.shape or []):
            if isinstance(d, int) and d > 0:
                shape.append(d)
                continue
            sym = getattr(d, "value", None)
            n = named.get(sym) if sym else None
            if n is None:
                n = batch if k == 0 else size
                if sym:
                    named[sym] = n
            shape.append(n)
        dt = _NP.get(v.dtype, np.float32)
        if np.issubdtype(dt, np.floating):
            feeds[v.name] = np.asarray(rng.standard_normal(shape).astype(dt))
        elif dt is np.bool_:
            feeds[v.name] = np.asarray(rng.random(shape) > 0.5)  # an array even for shape []
        else:
            feeds[v.name] = np.asarray(rng.integers(0, 8, size=shape).astype(dt))
    return feeds


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    proto = to_proto_with_data(model)
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def zeroed_copy(original: ir.Model, result: PruneResult) -> ir.Model:
    """The original with every member slice of the removed units zeroed (producer rows,
    biases, norm scale and shift, per-channel constants); consumer columns, running
    statistics and divisors keep their values."""
    dg, plan = result.graph, result.plan
    # the plan names values of the model it was made on (shape arithmetic folded)
    model = copy_model(result.source if result.source is not None else original)
    if plan is None or not plan.removed:
        return model
    dead_label = np.zeros(dg.labels.size, dtype=bool)
    for units in plan.removed.values():
        dead_label[units] = True
    dead = dead_label[dg.labels]
    arrays: dict[str, np.ndarray] = {}
    consts = {n: v for n, v in model.graph.initializers.items()}
    producers = {}
    for node in model.graph:
        if node.op_type == "Constant":
            producers[node.outputs[0].name] = node
    view = ModelView(model)
    for gid in plan.removed:
        for p in dg.groups[gid].params:
            if p.role in _KEEP_ROLES:
                continue
            ps = p.param_slot
            o = dg.offsets[ps]
            idx = np.nonzero(dead[o : o + dg.sizes[ps]])[0]
            if not idx.size:
                continue
            derived = view.derived(p.name)
            if derived is not None:  # a dequantized weight: its integer entries become zero points

                def get(name: str) -> np.ndarray:
                    if name not in arrays:
                        arrays[name] = np.array(_const(consts, producers, name))
                    return arrays[name]

                derived.zero(get, p.axis, idx)
                continue
            if p.name not in arrays:
                arrays[p.name] = np.array(_const(consts, producers, p.name))
            sl = [slice(None)] * arrays[p.name].ndim
            sl[p.axis] = idx
            arrays[p.name][tuple(sl)] = 0
    for name, arr in arrays.items():
        if name in consts:
            consts[name].const_value = ir.tensor(arr, name=name)
        else:
            set_constant_node(producers[name], ir.tensor(arr))
    return model


def _const(consts, producers, name):
    if name in consts:
        return consts[name].const_value.numpy()
    return _constant_node_value(producers[name])


def assert_prune_equivalent(
    original: ir.Model, result: PruneResult, atol: float = 1e-5, seed: int = 0, rtol: float = 0.0
) -> dict[str, Any]:
    """Zero-group oracle: the pruned model equals the zeroed original on random feeds.

    The bound is ``atol + rtol * max|reference|`` per output; ``rtol`` (default 0) is for
    unnormalized random graphs whose outputs reach tens, where float32 summation order alone
    moves the last digits.
    """
    feeds = random_feeds(original, seed)
    ref = [as_array(o) for o in run(zeroed_copy(original, result), feeds)]
    got = [as_array(o) for o in run(result.model, feeds)]
    assert len(ref) == len(got)
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape, f"output shape {g.shape} != {r.shape}"
        if not r.size:
            continue
        diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
        bound = atol + rtol * float(np.max(np.abs(r)))
        assert diff <= bound, (
            f"pruned model differs from the zeroed original by {diff:g} (bound {bound:g})"
        )
        worst = max(worst, diff)
    return {"max_abs_diff": worst}
