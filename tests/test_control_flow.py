"""If / Loop / Scan: channels that flow into or out of a subgraph (explicit inputs, captured
outer values, outputs) are blocked with a reason naming the op; everything else still prunes,
and the pruned model passes the full checker and the zero-group oracle on onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run
from tests.helpers import model_from_text

HEAD = """
<ir_version: 8, opset_import: ["" : 13]>
cf (float[2, 3, 6, 6] x, bool c) => ({out})
<float[8, 3, 3, 3] wa, float[8] ba, float[8, 8, 3, 3] wb, float[8] bb, float[4, 8, 1, 1] wc,
 float[4] bc, float[8, 1, 1] k{decl}>
{{
  a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
  ra = Relu (a)
  b = Conv <pads = [1, 1, 1, 1]> (ra, wb, bb)
  rb = Relu (b)
  {body}
}}
"""
OUT4 = "float[2, 4, 6, 6] out"

MODELS = {
    # rb is captured by both branches (not an explicit input)
    "if_captures": {
        "body": "y = If (c) <then_branch = g1 () => (float[2, 8, 6, 6] t) { t = Mul (rb, k) },"
        " else_branch = g2 () => (float[2, 8, 6, 6] e) { e = Identity (rb) }>\n"
        "  out = Conv (y, wc, bc)",
        "blocked": "rb",
        "reason": "If",
    },
    # the per-channel constant k is read by the main graph and inside a branch
    "if_shares_initializer": {
        "body": "m = Mul (rb, k)\n"
        "  y = If (c) <then_branch = g1 () => (float[8, 1, 1] t) { t = Add (k, k) },"
        " else_branch = g2 () => (float[8, 1, 1] e) { e = Identity (k) }>\n"
        "  my = Mul (m, y)\n  out = Conv (my, wc, bc)",
        "blocked": "rb",
        "reason": "k",
    },
    # rb is the loop-carried state's initial value; k lives only inside the body
    "loop_carried": {
        "body": "y = Loop (trip, cond, rb) <body = lb (int64 i, bool ci, float[2, 8, 6, 6] s) => "
        "(bool co, float[2, 8, 6, 6] s2) { co = Identity (ci)\n s2 = Mul (s, k) }>\n"
        "  out = Conv (y, wc, bc)",
        "decl": ", int64 trip = {3}, bool cond = {1}",
        "blocked": "rb",
        "reason": "Loop",
    },
    # rb is captured by the loop body, which also writes scan outputs
    "loop_captures_scan_output": {
        "body": "s_last, ys = Loop (trip, cond, zero) <body = lb (int64 i, bool ci, float[2, 8, 6, 6] s)"
        " => (bool co, float[2, 8, 6, 6] s2, float[2, 8, 6, 6] sc) { co = Identity (ci)\n"
        " s2 = Add (s, rb)\n sc = Identity (s2) }>\n"
        "  out = Conv (s_last, wc, bc)",
        "decl": ", int64 trip = {2}, bool cond = {1}, float[2, 8, 6, 6] zero",
        "blocked": "rb",
        "reason": "Loop",
    },
    # Scan over the batch axis with a running sum as state
    "scan": {
        "body": "st, ys = Scan (init, rb) <num_scan_inputs = 1, body = sb (float[8, 6, 6] s, "
        "float[8, 6, 6] xi) => (float[8, 6, 6] s2, float[8, 6, 6] yo) { s2 = Add (s, xi)\n"
        " yo = Identity (s2) }>\n"
        "  out = Conv (ys, wc, bc)",
        "decl": ", float[8, 6, 6] init",
        "blocked": "rb",
        "reason": "Scan",
    },
}


def _load(tmp_path, name: str) -> onnx.ModelProto:
    spec = MODELS[name]
    text = HEAD.format(out=spec.get("out", OUT4), decl=spec.get("decl", ""), body=spec["body"])
    proto = model_from_text(text)
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    return spa_nm.load(path)


def _group(res, value: str):
    (g,) = [g for g in res.graph.groups if any(s.value == value for s in g.slots)]
    return g


@pytest.mark.parametrize("name", sorted(MODELS))
def test_subgraph_channels_block_and_the_rest_prunes(tmp_path, name):
    model = _load(tmp_path, name)
    res = spa_nm.prune(model, 0.5, round_to=1)
    spec = MODELS[name]
    blocked = _group(res, spec["blocked"])
    assert not blocked.prunable
    reasons = [f"{b.op}: {b.node}: {b.reason}" for b in blocked.blocked]
    assert any(spec["reason"] in r for r in reasons), reasons
    # the first conv's channels never reach a subgraph: they prune
    first = _group(res, "a")
    assert first.prunable and first.id in res.plan.removed, [b.reason for b in first.blocked]
    assert res.report["params_after"] < res.report["params_before"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    # every subgraph still finds the outer values and initializers it reads
    kept = (
        {v.name for v in res.model.graph.initializers.values()}
        | {o.name for n in res.model.graph for o in n.outputs}
        | {v.name for v in res.model.graph.inputs}
    )
    for node in res.model.graph:
        for attr in node.attributes.values():
            if attr.type == onnx.AttributeProto.GRAPH:
                sub = attr.value
                local = {v.name for v in sub.inputs} | {o.name for n in sub for o in n.outputs}
                local |= set(sub.initializers)
                for sn in sub:
                    for v in sn.inputs:
                        if v is not None and v.name:
                            assert v.name in local or v.name in kept, v.name


def test_report_names_the_control_flow_op(tmp_path):
    model = _load(tmp_path, "loop_carried")
    res = spa_nm.prune(model, 0.5)
    ops = {b["op"] for b in res.report["blocked"]}
    assert "Loop" in ops
    info = spa_nm.inspect(model) if hasattr(spa_nm, "inspect") else None
    if info is not None:
        assert any(b["op"] == "Loop" for b in info["blocked"])


def test_initializer_only_read_inside_a_subgraph_survives(tmp_path):
    """The loop body reads k from the outer scope; pruning elsewhere removes dead nodes and
    unused initializers, and must keep k."""
    model = _load(tmp_path, "loop_carried")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert "k" in res.model.graph.initializers
    feeds = random_feeds(model)
    (out,) = run(res.model, feeds)
    assert np.isfinite(out).all()


# -- torch.jit.script with data-dependent control flow ---------------------------------------


@pytest.mark.torch
def test_torch_scripted_loop_and_if(tmp_path):
    """A scripted module whose forward has a loop over a run-time count and a data-dependent
    branch: the legacy exporter writes Loop and If; the pruner never produces an invalid
    model, and the convs outside the control flow prune exactly."""
    torch = pytest.importorskip("torch")
    import warnings

    class Body(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.c2(torch.relu(self.c1(x))))
            for _ in range(int(n)):
                h = h * 0.5 + 1.0
            h = h + 1.0 if bool(h.sum() > 0) else h - 1.0
            return self.c3(h)

    torch.manual_seed(0)
    net = torch.jit.script(Body().eval())
    x, n = torch.randn(2, 3, 6, 6), torch.tensor(2)
    path = tmp_path / "scripted.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x, n), str(path), dynamo=False, opset_version=17)
    except Exception as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"this torch cannot export scripted control flow: {type(e).__name__}")
    model = spa_nm.load(path)
    ops = {n.op_type for n in model.graph}
    assert ops & {"Loop", "If"}, ops
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] >= 1, res.report["blocked"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
