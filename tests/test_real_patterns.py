"""Patterns seen in real converter output, each built here by hand (issue: every real file
prunes exactly or is declined with its reason)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
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


@pytest.mark.parametrize("static", [False, True], ids=["symbolic", "static-folded"])
def test_int32_shape_arithmetic_keeps_its_element_type(static):
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
    dims = (["N", 3, 5, 5], ["N", 25, 4]) if static else (["N", 3, "H", "W"], ["N", "HW", 4])
    model = _model(nodes, [_f("x", dims[0])], [_f("y", dims[1])], inits)
    res = _prune_exactly(model)
    if not static:  # static: the whole target folds into one constant
        tail = res.model.graph.initializers["tail"].const_value.numpy()
        assert tail.dtype == np.int32 and tail.tolist() == [8]


def _is_subslice(orig: np.ndarray, new: np.ndarray) -> bool:
    """``new`` is ``orig[ix_(rows, cols, ...)]`` for some index sets (values of ``orig``
    are distinct, so each element of ``new`` says where it came from)."""
    where = {float(v): idx for idx, v in np.ndenumerate(orig)}
    assert len(where) == orig.size, "the test needs distinct values"
    maps: list[dict[int, int]] = [{} for _ in range(orig.ndim)]
    for idx, v in np.ndenumerate(new):
        src = where.get(float(v))
        if src is None:
            return False
        if any(maps[a].setdefault(idx[a], src[a]) != src[a] for a in range(orig.ndim)):
            return False
    return True


def _unrolled_lstm(steps: int = 4, c_in: int = 6, hidden: int = 8) -> ir.Model:
    """A CRNN head whose LSTM is written out as cells (torch legacy export of a hand-written
    cell): per step ``gates = x_t W^T + b + h U``, Split into i, f, g, o; the recurrent weight
    ``U`` (H, 4H) is one initializer that the exporter reads through one Identity per step."""
    rng = np.random.default_rng(1)
    inits = [
        nh.from_array(rng.standard_normal((c_in, 1, 3)).astype(np.float32), "wc"),
        nh.from_array(rng.standard_normal((4 * hidden, c_in)).astype(np.float32), "w_ih"),
        nh.from_array(rng.standard_normal(4 * hidden).astype(np.float32), "b_ih"),
        nh.from_array(rng.standard_normal((hidden, 4 * hidden)).astype(np.float32), "u"),
        nh.from_array(rng.standard_normal((hidden, 5)).astype(np.float32), "w_fc"),
        nh.from_array(rng.standard_normal(hidden).astype(np.float32), "h0"),
        nh.from_array(rng.standard_normal(hidden).astype(np.float32), "c0"),
        nh.from_array(np.array([hidden] * 4, np.int64), "split"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["feat"], pads=[1, 1]),  # [1, C, T]
        helper.make_node("Relu", ["feat"], ["rf"]),
        helper.make_node("Split", ["rf"], [f"x{t}" for t in range(steps)], axis=2),
    ]
    h, c = "h0", "c0"
    outs = []
    for t in range(steps):
        n = lambda op, i, o, **kw: helper.make_node(op, i, o, name=f"{op}_{t}_{o[0]}", **kw)  # noqa: E731
        nodes += [
            n("Identity", ["u"], [f"u{t}"]),
            n("Flatten", [f"x{t}"], [f"xs{t}"], axis=1),
            n("Gemm", [f"xs{t}", "w_ih", "b_ih"], [f"gx{t}"], transB=1),
            n("MatMul", [h, f"u{t}"], [f"gh{t}"]),
            n("Add", [f"gx{t}", f"gh{t}"], [f"g{t}"]),
            n("Split", [f"g{t}", "split"], [f"i{t}", f"f{t}", f"gg{t}", f"o{t}"], axis=1),
            n("Sigmoid", [f"i{t}"], [f"si{t}"]), n("Sigmoid", [f"f{t}"], [f"sf{t}"]),
            n("Tanh", [f"gg{t}"], [f"tg{t}"]), n("Sigmoid", [f"o{t}"], [f"so{t}"]),
            n("Mul", [f"sf{t}", c], [f"fc{t}"]), n("Mul", [f"si{t}", f"tg{t}"], [f"ig{t}"]),
            n("Add", [f"fc{t}", f"ig{t}"], [f"c{t + 1}"]),
            n("Tanh", [f"c{t + 1}"], [f"tc{t}"]), n("Mul", [f"so{t}", f"tc{t}"], [f"h{t + 1}"]),
            n("MatMul", [f"h{t + 1}", "w_fc"], [f"y{t}"]),
        ]  # fmt: skip
        h, c = f"h{t + 1}", f"c{t + 1}"
        outs.append(f"y{t}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=0))
    return _model(nodes, [_f("x", [1, 1, steps])], [_f("y", [steps, 5])], inits)


def test_unrolled_lstm_cells_keep_one_consistent_slice_of_shared_weights():
    model = _unrolled_lstm()
    res = _prune_exactly(model)
    orig = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    got = {k: v.const_value.numpy() for k, v in res.model.graph.initializers.items()}
    assert got["u"].shape == (4, 16)  # the recurrent weight: half the hidden units, once
    copies = [k for k, v in got.items() if k != "u" and v.shape == (4, 16)]
    assert not copies, f"the recurrent weight was copied per step: {copies}"
    for k in got.keys() & orig.keys():
        if got[k].shape != orig[k].shape:
            assert _is_subslice(orig[k], got[k]), k
    # the hidden units kept by the recurrent weight's rows are the ones kept in every gate
    rows = [int(np.argwhere(orig["u"] == got["u"][r, 0])[0][0]) for r in range(4)]
    cols = [int(np.argwhere(orig["u"] == got["u"][0, j])[0][1]) for j in range(16)]
    assert cols == [g * 8 + r for g in range(4) for r in rows]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("dynamo", "opset", "dynamic"),
    [(False, 17, True), (True, 18, False), (True, 21, False)],
    ids=["legacy17-dynamic-batch", "dynamo18-decomposed", "dynamo21-GroupNormalization"],
)
def test_groupnorm_unet_block_prunes_whole_groups(tmp_path, dynamo, opset, dynamic):
    """A UNet block (Conv, GroupNorm, SiLU, residual): the legacy exporter and dynamo at opset
    18 write GroupNorm as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add, dynamo at
    21 as GroupNormalization; each prunes whole groups exactly."""
    torch = pytest.importorskip("torch")
    from models.export import _quiet as quiet

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.g1 = torch.nn.GroupNorm(4, 16)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.g2 = torch.nn.GroupNorm(8, 16)
            self.c3 = torch.nn.Conv2d(16, 4, 1)
            with torch.no_grad():
                for g in (self.g1, self.g2):
                    g.weight.normal_()
                    g.bias.normal_()

        def forward(self, x):
            h = torch.nn.functional.silu(self.g1(self.c1(x)))
            h = h + torch.nn.functional.silu(self.g2(self.c2(h)))
            return self.c3(h)

    torch.manual_seed(0)
    path = tmp_path / "block.onnx"
    with quiet():
        torch.onnx.export(
            Block().eval(), (torch.randn(2, 3, 8, 8),), str(path), dynamo=dynamo,
            opset_version=opset, input_names=["x"],
            dynamic_axes={"x": {0: "N"}} if dynamic else None,
        )  # fmt: skip
    model = spa_nm.load(path)
    res = _prune_exactly(model)
    kept = {n.op_type for n in res.model.graph}
    assert ("GroupNormalization" in kept) == (opset >= 21)
    before = {n.name: n for n in model.graph if n.op_type == "GroupNormalization"}
    for node in res.model.graph:
        if node.op_type == "GroupNormalization":  # the group size stays, the count shrinks
            old = before[node.name]
            per = old.inputs[0].shape[1] // old.attributes["num_groups"].value
            assert node.inputs[0].shape[1] == per * node.attributes["num_groups"].value
            assert node.inputs[0].shape[1] < old.inputs[0].shape[1]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_without_axes_keeps_a_channel_pruned_to_one(opset):
    """Squeeze with no axes drops every size-1 axis; after pruning 2 channels to 1 the channel
    axis would go too, unless surgery names the axes that were size 1 before."""
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((4, 2)).astype(np.float32), "wg"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Squeeze", ["g"], ["s"]),  # [1, 2, 1, 1] -> [2]
        helper.make_node("Unsqueeze", ["s"], ["u"], **({"axes": [0]} if opset < 13 else {})),
        helper.make_node("Gemm", ["u", "wg"], ["y"], transB=1),
    ]
    if opset >= 13:
        inits.append(nh.from_array(np.array([0], np.int64), "ax0"))
        nodes[4] = helper.make_node("Unsqueeze", ["s", "ax0"], ["u"])
    model = _model(nodes, [_f("x", [1, 3, 5, 5])], [_f("y", [1, 4])], inits, opset=opset)
    res = _prune_exactly(model)
    assert res.model.graph.initializers["w1"].const_value.shape[0] == 1


def _constant_weight_mlp() -> ir.Model:
    """paddle2onnx's newer exporter: every weight is a Constant node, none an initializer; and
    a Linear inside an If branch."""
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = nh.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    wb = nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "wb")
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["wb_c"], value=wb),
         helper.make_node("MatMul", ["h2", "wb_c"], ["t_out"], name="branch_matmul")],
        "then", [], [_f("t_out", [2, 4])],
    )  # fmt: skip
    other = helper.make_graph([helper.make_node("Identity", ["h2"], ["e_out"])], "else", [], [_f("e_out", [2, 4])])
    nodes = [
        helper.make_node("Constant", [], ["w1_c"], value=w1),
        helper.make_node("Constant", [], ["w2_c"], value=w2),
        helper.make_node("MatMul", ["x", "w1_c"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2_c"], ["h2"], name="fc2"),
        helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other, name="branch"),
    ]
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    return _model(nodes, [_f("x", [2, 8]), flag], [_f("y", [2, 4])], [])


def test_nm_sparsifies_constant_node_weights_and_lists_subgraph_layers():
    from spa_nm.nm import check_nm

    model = _constant_weight_mlp()
    out, rep = spa_nm.sparsify(model, "2:4")
    done = {d["node"] for d in rep["layers_sparsified"]}
    assert {"fc1", "fc2"} <= done, rep
    skipped = {d["node"]: d["reason"] for d in rep["layers_skipped"]}
    assert "branch_matmul" in skipped and "If" in skipped["branch_matmul"]
    consts = {n.outputs[0].name: n.attributes["value"].value.numpy() for n in out.graph if n.op_type == "Constant"}
    assert check_nm(consts["w1_c"], 0, spa_nm.nm.NMSpec(2, 4))
    assert check_nm(consts["w2_c"], 0, spa_nm.nm.NMSpec(2, 4))
    # the input model is untouched
    orig = {n.outputs[0].name: n.attributes["value"].value.numpy() for n in model.graph if n.op_type == "Constant"}
    assert np.count_nonzero(orig["w1_c"]) == orig["w1_c"].size
    # a masked reference: the same graph with the masked weights computes the same output
    import onnxruntime as ort

    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32), "flag": np.array(False)}
    sess = ort.InferenceSession(ir.serde.serialize_model(out).SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.maximum(feeds["x"] @ consts["w1_c"], 0) @ consts["w2_c"]
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
def test_macs_count_matmuls_behind_run_time_shape_arithmetic(tmp_path):
    """A static legacy BERT export: ONNX inference leaves the batch dim after the embeddings
    unknown, so the MatMuls had no output shape and counted 0 MACs."""
    pytest.importorskip("transformers")
    from models.transformers_zoo import cached_export
    from spa_nm.metrics import count

    model = spa_nm.load(cached_export("bert_tiny", "legacy", tmp_path, dynamic=False))
    tokens = int(np.prod([d for d in model.graph.inputs[0].shape]))
    linear = 0
    for node in model.graph:
        w = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
        if w is not None and w.const_value is not None and len(w.const_value.shape) == 2:
            linear += tokens * int(np.prod(w.const_value.shape.numpy()))
    assert linear > 0
    assert count(model)["by_op"]["MatMul"]["macs"] >= linear


def _mlp_in_if(cond_from_shape: bool) -> ir.Model:
    """An MLP that lives in an If's then-branch (weights are outer initializers the branch
    captures, as torch exports them); the condition is a constant, or a test on a static
    shape that folds to one."""
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
        nh.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w3"),
    ]
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["t_out"])],
        "then", [], [_f("t_out", [2, 4])],
    )  # fmt: skip
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w3"], ["e_out"])], "else", [], [_f("e_out", [2, 4])])
    if cond_from_shape:
        inits += [nh.from_array(np.array(8, np.int64), "eight"), nh.from_array(np.array(1, np.int64), "one")]
        pre = [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
            helper.make_node("Equal", ["d", "eight"], ["cond"]),
        ]
    else:
        pre = [helper.make_node("Constant", [], ["cond"], value=nh.from_array(np.array(True)))]
    nodes = [*pre, helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    return _model(nodes, [_f("x", [2, 8])], [_f("y", [2, 4])], inits)


@pytest.mark.parametrize("cond_from_shape", [False, True], ids=["constant", "static-shape-test"])
def test_if_with_a_constant_condition_prunes_the_branch_it_takes(cond_from_shape):
    model = _mlp_in_if(cond_from_shape)
    res = _prune_exactly(model)
    assert res.model.graph.initializers["w1"].const_value.shape == (8, 8)
    assert not [n for n in res.model.graph if n.op_type == "If"]
    assert [v.name for v in res.model.graph.outputs] == ["y"]


def test_one_element_channel_slot_through_a_reshape_blocks_nothing():
    """A 1-channel map (spatial attention, YOLO's DFL output) reshaped with its size-1 axis
    dropped: a channel space of one element cannot shrink, so the Reshape has nothing to
    block, and the reshaped map's other reader keeps its group."""
    rng = np.random.default_rng(0)
    i64 = lambda v, n: nh.from_array(np.array(v, np.int64), n)  # noqa: E731
    inits = [
        nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        nh.from_array(0.2 * rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "wg"),
        nh.from_array(0.2 * rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        i64([2, 6, 6], "s3"), i64([1], "ax"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "wg"], ["g"]),  # [2, 1, 6, 6]
        helper.make_node("Reshape", ["g", "s3"], ["r"]),  # [2, 6, 6]
        helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
        helper.make_node("Mul", ["p", "u"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"]),
    ]
    model = _model(nodes, [_f("x", [2, 3, 6, 6])], [_f("y", [2, 4, 6, 6])], inits)
    res = _prune_exactly(model)
    assert not [b for b in res.report["blocked"] if "size-1" in b["reason"]], res.report["blocked"]


def test_a_channel_slot_of_unknown_size_blocks_without_a_rule_error():
    """paddle2onnx's BiGRU (Baidu LAC), tf2onnx BERT: an element-wise op on a channel axis
    whose size shape inference left unknown raised inside the rule ("unsupported operand
    type(s) for -: 'NoneType' and 'int'"); it is a plain block now (the suite runs with
    SPA_NM_STRICT_RULES, so a rule that raises fails this test)."""
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((4, 8)).astype(np.float32), "wg"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Reshape", ["c", "target"], ["r"]),  # [?, ?]: a run-time target
        helper.make_node("Relu", ["r"], ["a"]),
        helper.make_node("Gemm", ["a", "wg"], ["y"], transB=1),
    ]
    target = helper.make_tensor_value_info("target", TensorProto.INT64, [2])
    model = _model(nodes, [_f("x", [1, 3, 4, 4]), target], [_f("y", [None, 4])], inits)
    g = spa_nm.analyze(model)
    reasons = [b.reason for grp in g.groups for b in grp.blocked]
    assert not [r for r in reasons if "rule error" in r], reasons
    assert not any(grp.prunable and any(s.value == "a" for s in grp.slots) for grp in g.groups)

