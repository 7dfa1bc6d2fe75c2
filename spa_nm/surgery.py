"""Physical channel removal (METHODS.md §1.4): the only module that edits a pruned model.

Order of work, all on the model the `DependencyGraph` was built from (a copy owned by the
caller): (1) compute the kept elements of every slot; (2) fold the constants that removed
channels would still feed into consumer biases; (3) slice every member initializer; (4) apply
the rules' fixups (Reshape targets, Split sizes, Slice bounds, ``group``); (5) set the new
value shapes; (6) check the result with the full ONNX checker.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx

import onnx_ir as ir
from spa_nm.errors import SurgeryError
from spa_nm.facts import Blocked, FixInfo, Slot
from spa_nm.graph import DependencyGraph, composite_axis, node_label
from spa_nm.passes import add_initializer
from spa_nm.plan import PrunePlan

__all__ = ["apply_plan", "check_model"]


class _Consts:
    """Current arrays of the constants being edited, and bias creation for folds."""

    def __init__(self, dg: DependencyGraph) -> None:
        self.dg = dg
        self.arrays: dict[str, np.ndarray] = {}
        self.created: dict[str, tuple[int, Slot]] = {}  # new bias -> (axis, output slot)

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.array(self.dg.view.const(name))
        return self.arrays[name]

    def add_bias(self, node: ir.Node, index: int, bias: str | None, delta: np.ndarray) -> None:
        if bias is not None:
            cur = self.get(bias)
            self.arrays[bias] = (
                cur + delta.reshape(cur.shape[-1:]) if cur.ndim else cur + delta
            ).astype(cur.dtype)
            return
        name = _unique_name(self.dg, f"{node.name or node.op_type}_folded_bias")
        value = ir.Value(
            name=name,
            shape=ir.Shape(delta.shape),
            type=ir.TensorType(ir.DataType.from_numpy(delta.dtype)),
        )
        value.const_value = ir.tensor(delta, name=name)
        add_initializer(self.dg.view.model, value)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        self.arrays[name] = delta
        self.created[name] = (0, Slot(node.outputs[0].name, (1,)))
        self.dg.view.values[name] = value


def _unique_name(dg: DependencyGraph, base: str) -> str:
    name, k = base, 0
    while name in dg.view.values:
        k += 1
        name = f"{base}_{k}"
    return name


def apply_plan(dg: DependencyGraph, plan: PrunePlan) -> ir.Model:
    """Remove the planned units from ``dg.view.model`` in place and return it."""
    view = dg.view
    model = view.model
    if not plan.removed:
        return model
    for gid in plan.removed:
        g = dg.groups[gid]
        if not g.prunable:
            raise SurgeryError(
                f"group {gid} is blocked: {g.blocked[0].reason if g.blocked else 'not prunable'}"
            )
    dead_label = np.zeros(dg.labels.size, dtype=bool)
    for units in plan.removed.values():
        dead_label[units] = True
    dead = dead_label[dg.labels]

    touched = [dg.groups[gid] for gid in plan.removed]
    slots = sorted({s for g in touched for s in g.slots})
    kept: dict[Slot, np.ndarray] = {}
    for s in slots:
        o = dg.offsets[s]
        kept[s] = np.nonzero(~dead[o : o + dg.sizes[s]])[0]

    consts = _Consts(dg)
    # (1b) the plan's compensated consumer weights (OBSPA, METHODS.md §1.7), before the folds:
    # their removed columns are exactly 0, so a fold through them adds nothing
    for name, arr in plan.updates.items():
        consts.arrays[name] = np.asarray(arr, dtype=consts.get(name).dtype)
    for i, bias in plan.new_biases.items():
        consts.add_bias(view.nodes[i], 2, None, np.asarray(bias))
    # (2) folds, on the original weights, before any slicing
    for g in touched:
        for i, s in g.folds:
            o = dg.offsets[s]
            removed = dead[o : o + dg.sizes[s]]
            k = dg.kappa[s]
            if not np.any(removed & (k != 0)):
                continue
            f = dg.facts[i]
            f.folds[s](view.nodes[i], removed, k, consts)

    # (3) slice member initializers
    sliced: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for s in slots:
        if (
            view.values.get(s.value) is not None
            and view.const(s.value) is not None
            and s in dg.sizes
            and _is_param_slot(dg, s)
        ):
            sliced[s.value].append((s.axes[0], kept[s]))
    for name, (axis, out_slot) in consts.created.items():
        if out_slot in kept:
            sliced[name].append((axis, kept[out_slot]))
    for name in set(sliced) | set(consts.arrays):
        if view.derived(name) is not None:
            _set_derived(dg, name, consts, sliced.get(name, []))
            continue
        arr = consts.get(name)
        for axis, idx in sliced.get(name, []):
            if idx.size != arr.shape[axis]:
                arr = np.take(arr, idx, axis=axis)
        _set_const(view, name, arr)

    # (4) + (5) new shapes and fixups
    new_shapes = _new_shapes(dg, kept)

    def old_shape(name: str):
        return view.shape(name)

    def new_shape(name: str):
        return new_shapes.get(name, view.shape(name))

    def new_const(node: ir.Node, index: int, arr: np.ndarray) -> None:
        _replace_const_input(dg, node, index, arr)

    def const_of(value: ir.Value):
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        return view.const(value.name)

    info = FixInfo(old_shape, new_shape, kept.get, new_const, const_of)
    done: set[int] = set()
    index_of = {node_label(n, i): i for i, n in enumerate(view.nodes)}
    for g in touched:
        for name in g.nodes:
            i = index_of.get(name)
            if i is None or i in done:
                continue
            done.add(i)
            f = dg.facts[i]
            if isinstance(f, Blocked):
                continue
            for fx in f.fixups:
                fx.apply(view.nodes[i], info)
    for name, shape in new_shapes.items():
        v = view.values[name]
        if v.const_value is not None:
            continue
        old = v.shape
        dims = []
        for k, d in enumerate(shape):
            if (
                old is not None
                and k < len(old)
                and not isinstance(old[k], int)
                and d == view.shape(name)[k]
            ):
                dims.append(old[k])
            else:
                dims.append(d)
        v.shape = ir.Shape(dims)
    return model


def _set_derived(dg: DependencyGraph, name: str, consts: _Consts, slices) -> None:
    """Slice a derived constant (a dequantized weight) through its source initializers; if a
    fold or a compensation changed its values, store them as a plain initializer instead."""
    view = dg.view
    d = view.derived(name)
    v = view.values[name]
    if name in consts.arrays and not np.array_equal(consts.arrays[name], d.value):
        arr = consts.arrays[name]
        for axis, idx in slices:
            arr = np.take(arr, idx, axis=axis)
        nv = ir.Value(
            name=_unique_name(dg, f"{name}_folded"),
            shape=ir.Shape(arr.shape),
            type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
        )
        nv.const_value = ir.tensor(arr, name=nv.name)
        add_initializer(view.model, nv)
        view.values[nv.name] = nv
        v.replace_all_uses_with(nv)
        return
    arrays: dict[str, np.ndarray] = {}
    shape = list(d.value.shape)
    for axis, idx in slices:
        shape[axis] = int(idx.size)
        for src, src_axis in d.sources(axis):
            cur = arrays[src] if src in arrays else np.asarray(view.const(src))
            arrays[src] = np.take(cur, idx, axis=src_axis)
    for src, arr in arrays.items():
        _set_const(view, src, arr)
    v.shape = ir.Shape(shape)


def _is_param_slot(dg: DependencyGraph, s: Slot) -> bool:
    return any(p.param_slot == s for g in dg.groups if s in g.slots for p in g.params)


def _set_const(view, name: str, arr: np.ndarray) -> None:
    v = view.values[name]
    if v.const_value is not None or v.producer() is None:
        v.const_value = ir.tensor(arr, name=name)
        v.shape = ir.Shape(arr.shape)
        return
    set_constant_node(v.producer(), ir.tensor(arr, name=name))
    v.shape = ir.Shape(arr.shape)


def set_constant_node(node: ir.Node, tensor) -> None:
    """Make ``tensor`` the one value of a Constant node (dropping value_ints and the like)."""
    node.attributes["value"] = ir.AttrTensor("value", tensor)
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attributes:
            del node.attributes[key]


def _replace_const_input(dg: DependencyGraph, node: ir.Node, index: int, arr: np.ndarray) -> None:
    v = node.inputs[index] if index < len(node.inputs) else None
    arr = _as_dtype_of(v, arr)
    only_here = v is not None and len(list(v.uses())) == 1 and not v.is_graph_output()
    if v is not None and only_here and v.const_value is not None and not v.is_graph_input():
        v.const_value = ir.tensor(arr, name=v.name)
        v.shape = ir.Shape(arr.shape)
        return
    if (
        v is not None
        and only_here
        and v.producer() is not None
        and v.producer().op_type == "Constant"
    ):
        set_constant_node(v.producer(), ir.tensor(arr))
        v.shape = ir.Shape(arr.shape)
        return
    base = (v.name if v is not None else f"{node.name or node.op_type}_in{index}") + "_pruned"
    name = _unique_name(dg, base)
    nv = ir.Value(
        name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype))
    )
    nv.const_value = ir.tensor(arr, name=name)
    add_initializer(dg.view.model, nv)
    dg.view.values[name] = nv
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, nv)


def _as_dtype_of(v: ir.Value | None, arr: np.ndarray) -> np.ndarray:
    """``arr`` in the element type of the tensor it replaces: a rewritten int32 shape part of a
    Concat that also reads int64 Shape outputs must stay int32 (tf2onnx writes both)."""
    dtype = None if v is None else v.dtype
    if dtype is None:
        return arr
    try:
        target = np.dtype(dtype.numpy())
    except Exception:  # a type numpy cannot hold (float8, int4): keep what the rule built
        return arr
    arr = np.asarray(arr)
    if target == arr.dtype or target.kind not in "iuf" or arr.dtype.kind not in "iuf":
        return arr
    cast = arr.astype(target)
    if target.kind in "iu" and not np.array_equal(cast, arr):
        raise ValueError(f"rewritten {v.name} does not fit its element type {target}")
    return cast


def _new_shapes(dg: DependencyGraph, kept: dict[Slot, np.ndarray]) -> dict[str, tuple]:
    out: dict[str, list] = {}
    for s, idx in kept.items():
        if dg.view.const(s.value) is not None:
            continue
        shape = out.get(s.value) or list(dg.view.shape(s.value))
        if len(s.axes) == 1:
            shape[s.axes[0]] = int(idx.size)
        else:
            # the units of a composite slot vary along one axis only (checked by the graph)
            dims = [dg.view.shape(s.value)[a] for a in s.axes]  # before pruning
            k = composite_axis(dg.elements(s).reshape(dims))
            shape[s.axes[k]] = int(idx.size) // (math.prod(dims) // dims[k])
        out[s.value] = shape
    return {k: tuple(v) for k, v in out.items()}


def check_model(model: ir.Model, what: str = "pruned model") -> None:
    """Full ONNX checker (with strict shape inference) on ``model``; SurgeryError on failure."""
    total = sum(
        int(v.const_value.nbytes)
        for v in model.graph.initializers.values()
        if v.const_value is not None
    )
    if total > 2**31 - 1 - (64 << 20):
        return  # the in-memory checker cannot take >2 GB
    from spa_nm.io import to_proto_with_data

    proto = to_proto_with_data(model)  # the model keeps its external tensors
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise SurgeryError(f"{what} fails the ONNX checker: {str(e).splitlines()[0][:300]}") from e
