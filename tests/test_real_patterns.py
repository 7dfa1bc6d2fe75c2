"""Patterns seen in real converter output, each built here by hand (issue: every real file
prunes exactly or is declined with its reason)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

import spa_nm
from spa_nm.testing import assert_prune_equivalent


def _model(nodes, inputs, outputs, inits, opset=17) -> ir.Model:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return ir.serde.deserialize_model(m)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _prune_exactly(model: ir.Model, ratio=0.5, **kw):
    res = spa_nm.prune(model, ratio, round_to=1, **kw)
    assert res.plan.n_removed > 0, res.report["blocked"][:5]
    onnx.checker.check_model(ir.serde.serialize_model(res.model), full_check=True)
    assert_prune_equivalent(model, res, atol=1e-5)
    return res


def test_int32_shape_arithmetic_keeps_its_element_type():
    """tf2onnx computes shapes in int32 and casts to int64 at the end; the rewritten constant
    part of the Concat must stay int32 (else: Concat of int32 and int64)."""
    rng = np.random.default_rng(0)
    i64 = lambda v, n: nh.from_array(np.array(v, np.int64), n)  # noqa: E731
    inits = [
        nh.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((16, 4)).astype(np.float32), "wm"),
        nh.from_array(np.array([16], np.int32), "tail"),
        i64([0], "s0"), i64([1], "s1"), i64([2], "s2"), i64([3], "s3"), i64([4], "s4"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Cast", ["sh"], ["sh32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["sh32", "s0", "s1"], ["n32"]),
        helper.make_node("Slice", ["sh32", "s2", "s3"], ["h32"]),
        helper.make_node("Slice", ["sh32", "s3", "s4"], ["w32"]),
        helper.make_node("Mul", ["h32", "w32"], ["hw32"]),
        helper.make_node("Concat", ["n32", "tail", "hw32"], ["t32"], axis=0),
        helper.make_node("Cast", ["t32"], ["t64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["r", "t64"], ["v"]),
        helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["vt", "wm"], ["y"]),
    ]
    model = _model(nodes, [_f("x", ["N", 3, "H", "W"])], [_f("y", ["N", "HW", 4])], inits)
    res = _prune_exactly(model)
    tail = res.model.graph.initializers["tail"].const_value.numpy()
    assert tail.dtype == np.int32 and tail.tolist() == [8]
