"""Graph clean-ups that pruning needs: fold static shape arithmetic, drop dead nodes.

Exporters often compute sizes at run time (``Shape -> Gather -> Div -> Slice`` for
``torch.chunk``). Where the shapes involved are static, the result is a constant; folding it
lets rules read (and surgery rewrite) the bound instead of blocking. Dims that are symbolic
(a dynamic batch) stay computed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.reference

import onnx_ir as ir

__all__ = ["add_initializer", "fold_shape_arithmetic", "remove_dead_nodes"]

log = logging.getLogger(__name__)

# Ops that only do arithmetic on shapes and indices (deterministic, cheap).
_FOLDABLE = {
    "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Add", "Sub", "Mul",
    "Div", "Cast", "Reshape", "Identity", "ConstantOfShape", "Range", "Equal", "Where", "Neg",
    "Floor", "Ceil", "Sqrt", "Max", "Min", "ReduceProd", "Expand", "Abs", "Mod", "Constant",
    "Less", "Greater", "Not", "And", "Or", "Sign", "Tile", "Transpose", "Flatten", "GatherElements",
    "ReduceSum", "ReduceMax", "ReduceMin", "NonZero", "Pow", "Clip",
}  # fmt: skip
_MAX_ELEMENTS = 4096
_MAX_FILL_ELEMENTS = 1 << 28  # 1 GB of float32


def _const_of(v: ir.Value, known: dict[str, np.ndarray]) -> np.ndarray | None:
    if v.name in known:
        return known[v.name]
    if v.const_value is not None:  # an initializer (also when listed as an IR < 4 input)
        if v.const_value.size <= _MAX_ELEMENTS:
            arr = v.const_value.numpy()
            known[v.name] = arr
            return arr
    return None


def fold_shape_arithmetic(model: ir.Model) -> int:
    """Replace the outputs of shape arithmetic on static shapes by initializers; returns the
    number of values folded."""
    g = model.graph
    known: dict[str, np.ndarray] = {}
    opset = dict(model.opset_imports).get("", 13)
    folded = 0
    for node in list(g):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE:
            continue
        if any(o.is_graph_output() for o in node.outputs) or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        src = node.inputs[0] if node.inputs else None
        if (
            node.op_type == "Identity"
            and src is not None
            and src.const_value is not None
        ):
            # exporters deduplicate equal weights through Identity: give each its own
            # initializer (same tensor object, no copy) so they prune independently
            _replace_with_initializer(model, out, src.const_value)
            folded += 1
            continue
        if node.op_type == "ConstantOfShape" and src is not None and _const_of(src, known) is not None:
            # a tensor filled with one value (some converters build weights this way): fold
            # it whatever its size, up to a cap, sharing no memory with anything else
            shape = [int(d) for d in _const_of(src, known).reshape(-1)]
            if 0 <= int(np.prod(shape)) <= _MAX_FILL_ELEMENTS:
                attr = node.attributes.get("value")
                fill = attr.value.numpy().reshape(-1) if attr is not None else np.zeros(1, np.float32)
                _replace_with_initializer(model, out, np.full(shape, fill[0], dtype=fill.dtype))
                folded += 1
            continue
        if node.op_type == "Shape":
            arr = _static_shape(node)
        elif node.op_type == "Size":
            s = _static_shape(node)
            arr = None if s is None else np.asarray(np.prod(s), dtype=np.int64)
        else:
            inputs = [None if v is None else _const_of(v, known) for v in node.inputs]
            if any(v is not None and a is None for v, a in zip(node.inputs, inputs, strict=True)):
                continue
            arr = _evaluate(node, inputs, opset)
        if arr is None or arr.size > _MAX_ELEMENTS:
            continue
        known[out.name] = arr
        if node.op_type == "Constant":
            continue
        _replace_with_initializer(model, out, arr)
        folded += 1
    if folded:
        remove_dead_nodes(model)
    return folded


def _static_shape(node: ir.Node) -> np.ndarray | None:
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return None
    dims = list(x.shape)
    if node.op_type == "Shape":
        r = len(dims)
        start = node.attributes.get("start")
        end = node.attributes.get("end")
        s = 0 if start is None else int(start.value)
        e = r if end is None else int(end.value)
        s = max(0, min(r, s + r if s < 0 else s))
        e = max(0, min(r, e + r if e < 0 else e))
        dims = dims[s:e]
    return np.asarray(dims, dtype=np.int64)


def _evaluate(node: ir.Node, inputs: list[np.ndarray | None], opset: int) -> np.ndarray | None:
    try:
        proto = ir.serde.serialize_node(node)
        names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
        del proto.input[:]
        proto.input.extend(names)
        del proto.output[:]
        proto.output.append("out")
        feeds = {n: a for n, a in zip(names, inputs, strict=True) if n}
        graph = onnx.helper.make_graph(
            [proto],
            "fold",
            [
                onnx.helper.make_tensor_value_info(
                    n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
                )
                for n, a in feeds.items()
            ],
            [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.UNDEFINED, None)],
        )
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        (res,) = onnx.reference.ReferenceEvaluator(m).run(None, feeds)
        return np.asarray(res)
    except Exception as e:  # not foldable: leave the node alone
        log.debug("cannot fold %s (%s): %s", node.name, node.op_type, e)
        return None


def _replace_with_initializer(model: ir.Model, out: ir.Value, arr) -> None:
    name = out.name
    out.name = f"{name}__computed"
    tensor = arr if not isinstance(arr, np.ndarray) else ir.tensor(arr, name=name)
    nv = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype))
    nv.const_value = tensor
    add_initializer(model, nv)
    out.replace_all_uses_with(nv)


def add_initializer(model: ir.Model, value: ir.Value) -> None:
    """Register a new initializer; IR < 4 also lists every initializer as a graph input."""
    model.graph.register_initializer(value)
    if model.ir_version < 4:
        model.graph.inputs.append(value)


def remove_dead_nodes(model: ir.Model) -> None:
    """Drop nodes none of whose outputs is used or a graph output, and unused initializers."""
    g = model.graph
    changed = True
    while changed:
        changed = False
        for node in reversed(list(g)):
            if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                g.remove(node, safe=True)
                changed = True
    for name in list(g.initializers):
        v = g.initializers[name]
        if not v.uses() and not v.is_graph_output() and not v.is_graph_input():
            del g.initializers[name]
