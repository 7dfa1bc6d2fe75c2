"""Symbolic shape refinement: name the dims ONNX shape inference leaves unknown.

ONNX shape inference gives every dim it cannot compute a fresh ``unk__N`` symbol, so after an
attention block ``[batch, seq, H, d]`` comes back as ``[unk__53, unk__51, H, d]`` and a
``Reshape`` to ``[batch, seq, -1]`` no longer shows that its ``-1`` is ``H * d``: the head
channels block. onnxruntime ships a symbolic shape inference (sympy arithmetic on dims,
merging of broadcast dims, Reshape/Expand/Slice targets computed at run time) that keeps the
names. This module runs it on a light copy of the graph (large initializers become inputs of
the same type and shape, so no weight is copied) and adopts what it found where that is more
specific than what the model has, never overriding a static dim.

It is best effort: without onnxruntime (or sympy) or when the tool fails on a graph, nothing
changes and the channels it would have freed stay blocked with their reasons.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

from spa_nm import limits
from spa_nm.io import light_proto

__all__ = ["has_symbolic_dims", "has_unknown_shapes", "refine_symbolic_shapes"]

log = logging.getLogger(__name__)

def has_symbolic_dims(model: ir.Model) -> bool:
    """Whether some graph input has a dim that is not a number."""
    return any(
        v.shape is not None and any(not isinstance(d, int) for d in v.shape)
        for v in model.graph.inputs
    )


def has_unknown_shapes(model: ir.Model) -> bool:
    """Whether some node output has no shape (an op ONNX cannot infer, such as onnxruntime's
    contrib ops, which the symbolic inference knows)."""
    return any(
        v.shape is None and v.const_value is None for node in model.graph for v in node.outputs
    )


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _better(ours: ir.Shape | None, theirs: list[int | str | None]) -> list | None:
    """``theirs`` merged into ``ours`` when it adds something and contradicts nothing."""
    if ours is None:
        return list(theirs)
    if len(ours) != len(theirs):
        return None
    merged: list[int | str | None] = []
    gain = False
    for d, t in zip(ours, theirs, strict=True):
        if isinstance(d, int):
            if isinstance(t, int) and t != d:
                return None  # a contradiction: trust neither, keep ours
            merged.append(d)
            continue
        name = d.value if d is not None else None
        if isinstance(t, int) or (
            isinstance(t, str) and (name is None or name.startswith("unk__")) and t != name
        ):
            merged.append(t)
            gain = True
        else:
            merged.append(name)
    return merged if gain else None


def _run_tool(tool, proto: onnx.ModelProto, auto_merge: bool) -> tuple[onnx.ModelProto, bool]:
    """The tool's own loop, minus its ending: where some shape stays unknown its
    ``infer_shapes`` writes ``sym_shape_infer_temp.onnx`` into the working directory and
    raises, where the shapes it did find are still worth having. Returns the inferred
    model and whether every shape was found."""
    sym = tool(2**31 - 1, auto_merge, False, 0)
    sym._preprocess(proto)
    complete = False
    while sym.run_:
        complete = sym._infer_impl()
    sym._update_output_from_vi()
    return sym.out_mp_, bool(complete)


def _bounded(tool):
    """``tool`` sized before it computes: its ConstantOfShape builds the values of an int64
    fill of literal dims with ``np.ones`` (to carry them on as shape data), whatever their
    number; past `limits.SHAPE_DATA_ELEMENTS` elements the output gets its shape only."""
    from onnxruntime.tools import symbolic_shape_infer as ssi

    class Bounded(tool):
        def _infer_ConstantOfShape(self, node):  # noqa: N802 (the tool's dispatch name)
            dims = self._get_int_or_float_values(node)[0]
            dims = dims if dims is None or isinstance(dims, list) else [dims]
            n = None if dims is None or not all(ssi.is_literal(d) for d in dims) else limits.numel(int(d) for d in dims)
            if n is None or n <= limits.SHAPE_DATA_ELEMENTS:
                return super()._infer_ConstantOfShape(node)
            self._update_computed_dims(dims)
            vi = self.known_vi_[node.output[0]]
            vi.CopyFrom(onnx.helper.make_tensor_value_info(
                node.output[0], vi.type.tensor_type.elem_type, ssi.get_shape_from_sympy_shape(dims)
            ))  # fmt: skip
            return None

    return Bounded


def refine_symbolic_shapes(model: ir.Model) -> int:
    """Run onnxruntime's symbolic shape inference on a light copy of ``model`` and adopt its
    shapes where they are more specific. Returns the number of values refined (0 when the
    graph has no symbolic input dims, the tool is missing, or it failed)."""
    if not (has_symbolic_dims(model) or has_unknown_shapes(model)):
        return 0
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception as e:  # onnxruntime or sympy missing: the ONNX shapes stay
        log.debug("symbolic shape inference unavailable: %s", e)
        return 0
    proto = light_proto(model)
    tool_log = logging.getLogger(SymbolicShapeInference.__module__)
    level = tool_log.level
    tool_log.setLevel(logging.CRITICAL)
    out = None
    try:
        # strict first; where that leaves shapes unknown, merge conflicting symbols (a
        # broadcast of two names that the graph makes equal at run time)
        for merge in (False, True):
            try:
                out, complete = _run_tool(_bounded(SymbolicShapeInference), proto, merge)
            except Exception as e:  # an op or a pattern it cannot handle
                log.debug("symbolic shape inference (auto_merge=%s) failed: %s", merge, e)
                continue
            if complete:
                break
    finally:
        tool_log.setLevel(level)
    if out is None:
        return 0
    infos = {vi.name: vi for vi in (*out.graph.value_info, *out.graph.output)}
    refined = 0
    for node in model.graph:
        for v in node.outputs:
            vi = infos.get(v.name)
            dims = None if vi is None else _dims(vi)
            if dims is None or v.const_value is not None:
                continue
            merged = _better(v.shape, dims)
            if merged is None:
                continue
            v.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in merged])
            if v.dtype is None and vi.type.tensor_type.elem_type:
                v.dtype = ir.DataType(vi.type.tensor_type.elem_type)
            refined += 1
    return refined
