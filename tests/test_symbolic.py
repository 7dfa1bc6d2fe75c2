"""Symbolic dims: onnxruntime's symbolic shape inference names what ONNX leaves ``unk__``,
and the torch exporter's Expand ``-1`` guard (``Where(Equal(t, -1), ones, t)``) is read
entry by entry, so attention with a dynamic batch and sequence keeps its heads prunable."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import spa_nm
from spa_nm import io
from spa_nm.passes import fold_shape_arithmetic
from spa_nm.symbolic import _better, has_symbolic_dims, refine_symbolic_shapes
from spa_nm.testing import assert_prune_equivalent
from spa_nm.view import ModelView

pytest.importorskip("onnxruntime")

# x [batch, seq, 8] -> heads [batch, seq, 2, 4] (run-time target) -> times a position table
# sliced to the run-time length (as rotary embeddings are) -> scores over the heads -> merge
# back with a run-time [batch, seq, -1] target -> Linear. ONNX shape inference loses ``seq``
# at the table product, and with it the size of the merged axis.
ATTN = """
<ir_version: 8, opset_import: ["" : 17]>
attn (float[batch, seq, 8] x) => (float[batch, seq, 3] y) <int64[2] hd = {2, 4}, int64[1] m1 = {-1}, int64[1] s0 = {0}, int64[1] s1 = {1}, int64[1] s2 = {2}> {
    q = MatMul (x, wq)
    v = MatMul (x, wv)
    shp = Shape (x)
    bt = Slice (shp, s0, s2)
    t4 = Concat <axis = 0> (bt, hd)
    q4 = Reshape (q, t4)
    v4 = Reshape (v, t4)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    vh = Transpose <perm = [0, 2, 1, 3]> (v4)
    len = Slice (shp, s1, s2)
    pos = Slice (tab, s0, len, s2)
    qp = Mul (qh, pos)
    kt = Transpose <perm = [0, 1, 3, 2]> (qp)
    s = MatMul (qp, kt)
    p = Softmax <axis = -1> (s)
    c = MatMul (p, vh)
    ct = Transpose <perm = [0, 2, 1, 3]> (c)
    t3 = Concat <axis = 0> (bt, m1)
    merged = Reshape (ct, t3)
    y = MatMul (merged, wo)
}
"""


def _attn_model() -> ir.Model:
    proto = onnx.parser.parse_model(ATTN)
    rng = np.random.default_rng(0)
    for name, shape in (("wq", (8, 8)), ("wv", (8, 8)), ("wo", (8, 3)), ("tab", (1, 1, 64, 4))):
        arr = rng.standard_normal(shape).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return io.infer_shapes(ir.serde.deserialize_model(proto))


def _dims(v: ir.Value) -> list:
    return [d if isinstance(d, int) else d.value for d in v.shape]


def test_refine_names_the_dims_onnx_leaves_unknown():
    model = _attn_model()
    vals = {v.name: v for n in model.graph for v in n.outputs}
    assert has_symbolic_dims(model)
    before = _dims(vals["merged"])
    assert not isinstance(before[2], int), before  # ONNX could not tell
    weights = {k: v.const_value for k, v in model.graph.initializers.items()}
    assert refine_symbolic_shapes(model) > 0
    assert _dims(vals["ct"]) == ["batch", "seq", 2, 4]
    assert _dims(vals["merged"]) == ["batch", "seq", 8]
    # the light copy it ran on took nothing away from the model
    assert all(model.graph.initializers[k].const_value is t for k, t in weights.items())


@pytest.mark.parametrize("refine", [True, False])
def test_heads_prune_through_run_time_targets(monkeypatch, refine):
    """With the refinement the heads prune exactly; without it they block (the control)."""
    if not refine:
        monkeypatch.setattr("spa_nm.api.refine_symbolic_shapes", lambda model: 0)
    model = _attn_model()
    g = spa_nm.analyze(model)
    heads = [grp for grp in g.groups if grp.prunable and grp.size == 2]
    if not refine:
        assert not heads
        return
    assert heads, [(grp.size, [b.reason for b in grp.blocked]) for grp in g.groups]
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.plan.n_removed > 0
    assert_prune_equivalent(model, res, atol=1e-5)


def test_static_model_is_left_alone():
    proto = onnx.parser.parse_model(
        "<ir_version: 8, opset_import: [\"\" : 17]> g (float[2, 8] x) => (float[2, 8] y) { y = Relu (x) }"
    )
    model = ir.serde.deserialize_model(proto)
    assert not has_symbolic_dims(model)
    assert refine_symbolic_shapes(model) == 0


def test_merge_never_overrides_a_static_dim():
    ours = ir.Shape([ir.SymbolicDim("unk__1"), 4, ir.SymbolicDim("batch")])
    assert _better(ours, ["batch", 4, "batch"]) == ["batch", 4, "batch"]
    assert _better(ours, ["batch", 5, "batch"]) is None  # a contradiction: keep ours
    assert _better(ours, [None, 4, "other"]) is None  # nothing gained over a named dim
    assert _better(ours, ["b", 4]) is None  # another rank


# the legacy exporter's Expand target: Reshape(Concat(B, 2, 2, T, 4), [-1]) behind the -1 guard
GUARD = """
<ir_version: 8, opset_import: ["" : 17]>
guard (float[batch, 2, 1, seq, 4] x) => (float[batch, 2, 2, seq, 4] y)
    <int64[1] z = {0}, int64[1] one = {1}, int64[1] three = {3}, int64[1] four = {4},
     int64[2] kv = {2, 2}, int64[1] m1 = {-1}, int64[5] ones = {1, 1, 1, 1, 1},
     int64[5] neg = {-1, -1, -1, -1, -1}> {
    shp = Shape (x)
    b = Slice (shp, z, one)
    t = Slice (shp, three, four)
    cat = Concat <axis = 0> (b, kv, t, four)
    flat = Reshape (cat, m1)
    eq = Equal (flat, neg)
    target = Where (eq, ones, flat)
    y = Expand (x, target)
}
"""


def test_expand_guard_is_read_entry_by_entry():
    model = io.infer_shapes(ir.serde.deserialize_model(onnx.parser.parse_model(GUARD)))
    view = ModelView(model)
    assert view.partial_ints("target") == [None, 2, 2, None, 4]
    fold_shape_arithmetic(model)
    y = next(n for n in model.graph if n.op_type == "Expand").outputs[0]
    assert _dims(y) == ["batch", 2, 2, "seq", 4]
