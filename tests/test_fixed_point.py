"""The rule pass reaches its fixed point however far a channel travels without a weight."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_nm
from spa_nm.testing import assert_prune_equivalent


def _chain(n_ops: int, ops=("Relu", "Sigmoid", "Neg", "Abs")) -> ir.Model:
    """Conv -> n_ops element-wise ops -> Conv: one channel group across the whole chain."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h0"], pads=[1, 1, 1, 1], name="conv1")]
    for k in range(n_ops):
        nodes.append(helper.make_node(ops[k % len(ops)], [f"h{k}"], [f"h{k + 1}"], name=f"e{k}"))
    nodes.append(helper.make_node("Conv", [f"h{n_ops}", "w2"], ["y"], name="conv2"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w1, w2],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("n_ops", [10, 100, 1000])
def test_long_elementwise_chain_is_one_group(n_ops):
    model = _chain(n_ops)
    g = spa_nm.analyze(model)
    groups = [grp for grp in g.groups if grp.prunable]
    assert len(groups) == 1, [(grp.size, grp.blocked[:2]) for grp in g.groups]
    assert groups[0].size == 16
    assert not [grp for grp in g.groups if grp.blocked and any(
        s.value.startswith("h") for s in grp.slots)]
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.plan.n_removed == 8
    assert_prune_equivalent(model, res, atol=1e-5)
    onnx.checker.check_model(ir.serde.serialize_model(res.model), full_check=True)


def test_rule_runs_are_linear_in_the_chain(monkeypatch):
    """Each rule re-runs only when a value it read gained a slot: O(nodes), not O(nodes²)."""
    from spa_nm import graph

    calls = []
    real = graph._run_rule

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(graph, "_run_rule", counting)
    model = _chain(200)
    spa_nm.analyze(model)
    assert len(calls) <= 4 * 202, len(calls)


def test_a_rule_that_never_settles_is_an_error(monkeypatch):
    """The bound on rule runs is an error when hit, never a silent truncation."""
    from spa_nm import graph
    from spa_nm.facts import Link, OpFacts, Slot

    monkeypatch.setattr(graph, "_MAX_RUNS_PER_NODE", 5)
    real = graph._run_rule
    counter = {"n": 0}

    def flip(view, node, i, known, reads=None):
        if node.op_type != "Relu":
            return real(view, node, i, known, reads)
        # a rule whose answer changes with every run: it reads its output, adds a new axis set
        reads.add(node.outputs[0].name)
        counter["n"] += 1
        out = node.outputs[0].name
        s = Slot(out, (counter["n"],))
        return OpFacts(links=[Link(s, s)])

    monkeypatch.setattr(graph, "_run_rule", flip)
    with pytest.raises(graph.AnalysisLimit, match="did not settle"):
        spa_nm.analyze(_chain(1, ops=("Relu",)))


def _deep_transformer(tmp_path, layers: int, reduce: str):
    """A pre-norm transformer whose LayerNorms are written out (mean and variance by
    ``reduce``: ReduceMean, or ReduceSum divided by the width as jax2tf and tf2onnx write it)."""
    torch = pytest.importorskip("torch")
    from models.export import _quiet

    d, heads = 16, 2

    class LN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.randn(d))
            self.b = torch.nn.Parameter(torch.randn(d))

        def forward(self, x):
            if reduce == "sum":
                mu = x.sum(-1, keepdim=True) / d
                var = ((x - mu) * (x - mu)).sum(-1, keepdim=True) / d
            else:
                mu = x.mean(-1, keepdim=True)
                var = (x - mu).pow(2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5) * self.g + self.b

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = LN(), LN()
            self.qkv = torch.nn.Linear(d, 3 * d)
            self.o = torch.nn.Linear(d, d)
            self.up = torch.nn.Linear(d, 4 * d)
            self.down = torch.nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).split(d, -1)
            q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(torch.relu(self.up(self.n2(x))))

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, d), *[Layer() for _ in range(layers)], LN(), torch.nn.Linear(d, 5)
    ).eval()
    path = tmp_path / f"deep_{layers}_{reduce}.onnx"
    with _quiet():
        torch.onnx.export(net, (torch.randn(1, 4, 8),), str(path), dynamo=False, opset_version=17)
    return spa_nm.load(path)


@pytest.mark.torch
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_deep_transformer_with_decomposed_layernorm_prunes_mlp_and_heads(tmp_path, reduce):
    layers = 48 if reduce == "mean" else 4
    model = _deep_transformer(tmp_path, layers, reduce)
    res = spa_nm.prune(model, 0.5, round_to=1)
    r = res.report
    # per layer: the MLP hidden units and the heads; the residual stream stays (approximate)
    assert r["groups_pruned"] >= 2 * layers, r["blocked"][:4]
    assert not any("rule error" in b["reason"] for b in r["blocked"])
    assert_prune_equivalent(model, res, atol=1e-4)
    onnx.checker.check_model(ir.serde.serialize_model(res.model), full_check=True)
    # the residual stream through the written-out norms is approximate: opt-in
    res = spa_nm.prune(model, 0.5, round_to=1, allow_approximate=True)
    assert res.report["groups_pruned"] > r["groups_pruned"]
    assert res.report["approximate"]
