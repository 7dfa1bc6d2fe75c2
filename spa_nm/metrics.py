"""Parameter and MAC counts, per op type (MACs come from each op's rule)."""

from __future__ import annotations

import math
from collections import defaultdict

import onnx_ir as ir
from spa_nm.graph import ModelView
from spa_nm.rules import RuleContext, macs_of

__all__ = ["count"]

# integer types that hold quantized weights (int32 and int64 hold shapes and indices too)
_QUANTIZED = (ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4,
              ir.DataType.INT16, ir.DataType.UINT16)  # fmt: skip


_MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "Attention", "LSTM", "GRU", "RNN"}


def count(model: ir.Model, view: ModelView | None = None) -> dict:
    """``{"params", "macs", "by_op": {op: {"params", "macs"}}}`` for the main graph.

    MACs are counted at a static shape: where graph inputs have symbolic or negative dims,
    they are resolved as `spa_nm.runtime.make_feeds` resolves them (every unknown dim 1, so
    the batch is 1) on a copy, whose shapes are inferred again.
    """
    if _dynamic(model):
        model = _static_copy(model)
        view = None
    view = view or ModelView(model)
    by_op: dict[str, dict[str, int]] = defaultdict(lambda: {"params": 0, "macs": 0})
    owner: dict[str, str] = {}
    for node in view.nodes:
        for v in node.inputs:
            if v is not None and v.name and v.name not in owner:
                owner[v.name] = node.op_type
    total_params = 0
    for name, v in model.graph.initializers.items():
        if v.const_value is None or not (
            v.const_value.dtype.is_floating_point() or v.const_value.dtype in _QUANTIZED
        ):
            continue
        n = math.prod(int(d) for d in v.const_value.shape)  # Python ints: never overflows
        total_params += n
        by_op[owner.get(name, "(unused)")]["params"] += n
    total_macs = 0
    for node in view.nodes:
        if node.op_type == "Constant":
            c = view.const(node.outputs[0].name)
            if c is not None and c.dtype.kind == "f" and c.size > 1:
                total_params += int(c.size)
                by_op["Constant"]["params"] += int(c.size)
            continue
        m = macs_of(node, RuleContext(view, node, {}))
        total_macs += m
        if m:
            by_op[node.op_type]["macs"] += m
    return {"params": total_params, "macs": total_macs, "by_op": dict(by_op)}


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _dynamic(model: ir.Model) -> bool:
    """Symbolic or unknown dims on a graph input, or on an output of a node that has MACs
    (ONNX inference leaves dims behind run-time shape arithmetic unknown even for a static
    input)."""
    if any(not _static(v.shape) for v in model.graph.inputs):
        return True
    return any(
        node.op_type in _MAC_OPS and not _static(node.outputs[0].shape) for node in model.graph
    )


def _static_copy(model: ir.Model) -> ir.Model:
    from spa_nm.io import infer_shapes

    work = model.clone()
    for v in work.graph.inputs:
        if v.shape is not None and not _static(v.shape):
            v.shape = ir.Shape([d if isinstance(d, int) and d >= 0 else 1 for d in v.shape])
    for node in work.graph:  # shapes inferred for the dynamic model would win the merge
        for v in node.outputs:
            if v.shape is not None and not _static(v.shape) and not v.is_graph_output():
                v.shape = None
    for v in work.graph.outputs:
        if v.shape is not None and not _static(v.shape):
            v.shape = None
    work = infer_shapes(work)
    # with the dims fixed, run-time shape arithmetic (an attention block's Shape -> Gather ->
    # Concat -> Reshape) is static: fold it so inference reaches the MatMuls behind it
    from spa_nm.passes import fold_shape_arithmetic

    for _ in range(4):
        if not fold_shape_arithmetic(work):
            break
        work = infer_shapes(work)
    return work
