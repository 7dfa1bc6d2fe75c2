"""spa_nm/rules/recurrent.py: LSTM / GRU / RNN hidden units prune exactly (every gate block of
W, R, B, P, the R columns, the initial states), the input axis is a consumer cut with a fold
into B, and activations or initial states that would keep a zeroed unit alive block."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa_nm
from tests.rules._harness import Case, build, check, variants

CASES: list[Case] = []

SEQ, BATCH, IN, H, OUT = 5, 2, 6, 8, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def rnn_net(
    op: str = "LSTM",
    *,
    direction: str = "forward",
    bias: bool = True,
    attrs: str = "",
    pre: str = "pb = Add (p, bp)",
    extra_inputs: str = "",
    decl: str = "",
    inputs: str = "",
    layout: int = 0,
    use: str = "y",
    opset: int = 14,
) -> str:
    """``x -> MatMul+Add (p, pb) -> PRE -> op -> Squeeze/Transpose+Reshape -> MatMul -> out``.

    ``pre`` writes ``pb`` (the op's X); ``extra_inputs``: the op's inputs after B (``,
    seq_lens, h0`` ...); ``use``: ``"y"`` reads Y, ``"yh"`` reads Y_h only.
    """
    g = GATES[op]
    d = 2 if direction == "bidirectional" else 1
    x_shape = f"{BATCH}, {SEQ}, {IN}" if layout else f"{SEQ}, {BATCH}, {IN}"
    decls = [
        f"float[{IN}, {IN}] wp",
        f"float[{IN}] bp",
        f"float[{d}, {g * H}, {IN}] W",
        f"float[{d}, {g * H}, {H}] R",
        f"float[{d * H}, {OUT}] wc",
    ]
    if bias:
        decls.append(f"float[{d}, {2 * g * H}] B")
    if decl:
        decls.append(decl)
    args = "pb, W, R" + (", B" if bias else (", " if extra_inputs else "")) + extra_inputs
    all_attrs = (
        f'hidden_size = {H}, direction = "{direction}"'
        + (f", layout = {layout}" if layout else "")
        + (f", {attrs}" if attrs else "")
    )
    outs = "y, yh" + (", yc" if op == "LSTM" else "")
    if use == "y":
        if layout:  # Y [batch, seq, D, H]
            tail = "yr = Reshape (y, shp)\n  out = MatMul (yr, wc)"
            decls.append(f"int64[3] shp = {{{BATCH}, {SEQ}, {d * H}}}")
        elif d == 1:
            tail = "ys = Squeeze (y, ax)\n  out = MatMul (ys, wc)"
            decls.append("int64[1] ax = {1}")
        else:
            tail = "yt = Transpose <perm = [0, 2, 1, 3]> (y)\n  yr = Reshape (yt, shp)\n  out = MatMul (yr, wc)"
            decls.append(f"int64[3] shp = {{{SEQ}, {BATCH}, {d * H}}}")
        out_shape = f"{BATCH}, {SEQ}, {OUT}" if layout else f"{SEQ}, {BATCH}, {OUT}"
    else:  # Y_h [D, batch, H] (layout 1: [batch, D, H])
        tail = "yt = Transpose <perm = [1, 0, 2]> (yh)\n  yr = Reshape (yt, shp)\n  out = MatMul (yr, wc)"
        if layout:
            tail = "yr = Reshape (yh, shp)\n  out = MatMul (yr, wc)"
        decls.append(f"int64[2] shp = {{{BATCH}, {d * H}}}")
        outs = ", yh" + (", yc" if op == "LSTM" else "")
        out_shape = f"{BATCH}, {OUT}"
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
case (float[{x_shape}] x{", " + inputs if inputs else ""}) => (float[{out_shape}] out)
<{", ".join(decls)}>
{{
  p = MatMul (x, wp)
  {pre}
  {outs} = {op} <{all_attrs}> ({args})
  {tail}
}}
"""


def _hidden_and_input(cid: str, text: str, **kw) -> list[Case]:
    """The op as the producer of its hidden units (group of ``y``/``yh``) and as the consumer
    of its input features (group of ``pb``)."""
    target = kw.pop("target", "y")
    return [
        Case(f"{cid}_hidden", text, target=target, separate=("pb",), **kw),
        Case(f"{cid}_input", text, target="pb", separate=(target,), **kw),
    ]


for op in ("LSTM", "GRU", "RNN"):
    for direction in ("forward", "reverse", "bidirectional"):
        for bias in (True, False):
            CASES += _hidden_and_input(
                f"{op.lower()}_{direction}_{'bias' if bias else 'nobias'}",
                rnn_net(op, direction=direction, bias=bias),
            )
    d2 = f"{2}"
    # Y_h only (Y not produced), initial state as a constant, sequence lengths
    CASES += _hidden_and_input(
        f"{op.lower()}_yh_only_h0_seqlens",
        rnn_net(
            op,
            direction="bidirectional",
            use="yh",
            extra_inputs=", sl, h0",
            decl=f"int32[{BATCH}] sl = {{5, 3}}, float[{d2}, {BATCH}, {H}] h0",
        ),
        target="yh",
    )
    # the carried constant of a removed input channel folds into B (Sigmoid(0) = 0.5)
    CASES.append(
        Case(
            f"{op.lower()}_input_folds_into_b",
            rnn_net(op, pre="q = Add (p, bp)\n  pb = Sigmoid (q)"),
            target="q",
            coupled=("pb",),
        )
    )
    CASES.append(
        Case(
            f"{op.lower()}_input_no_b_blocks",
            rnn_net(op, bias=False, pre="q = Add (p, bp)\n  pb = Sigmoid (q)"),
            "block:cannot be folded",
            target="q",
        )
    )
    # an initial state computed from the graph: exact when it carries 0 on removed units
    CASES.append(
        Case(
            f"{op.lower()}_h0_activation",
            rnn_net(
                op,
                extra_inputs=", , h0",
                pre="pb = Add (p, bp)\n  hm = MatMul (x, wh)\n  hs = Slice (hm, s0, s1, s2)\n  h0 = Tanh (hs)",
                decl=f"float[{IN}, {H}] wh, int64[1] s0 = {{0}}, int64[1] s1 = {{1}}, int64[1] s2 = {{0}}",
            ),
            target="y",
            coupled=("h0", "hm"),
        )
    )
    CASES.append(
        Case(
            f"{op.lower()}_h0_sigmoid_blocks",
            rnn_net(
                op,
                extra_inputs=", , h0",
                pre="pb = Add (p, bp)\n  hm = MatMul (x, wh)\n  hs = Slice (hm, s0, s1, s2)\n  h0 = Sigmoid (hs)",
                decl=f"float[{IN}, {H}] wh, int64[1] s0 = {{0}}, int64[1] s1 = {{1}}, int64[1] s2 = {{0}}",
            ),
            "block:not a known constant",
            target="y",
            coupled=("h0",),
        )
    )
    CASES.append(
        Case(
            f"{op.lower()}_h0_graph_input_blocks",
            rnn_net(op, extra_inputs=", , h0", inputs=f"float[1, {BATCH}, {H}] h0"),
            "block:graph inputs keep their shape",
            target="y",
        )
    )

CASES += [
    # LSTM extras: peepholes, initial c, clip and coupled input-forget gate
    *_hidden_and_input(
        "lstm_peepholes_h0_c0",
        rnn_net(
            "LSTM",
            direction="bidirectional",
            extra_inputs=", , h0, c0, P",
            decl=f"float[2, {BATCH}, {H}] h0, float[2, {BATCH}, {H}] c0, float[2, {3 * H}] P",
        ),
    ),
    *_hidden_and_input(
        "lstm_clip_input_forget", rnn_net("LSTM", attrs="clip = 0.5, input_forget = 1")
    ),
    *_hidden_and_input(
        "lstm_relu_activations",
        rnn_net("LSTM", attrs='activations = ["Sigmoid", "Relu", "Relu"]'),
    ),
    *_hidden_and_input("gru_linear_before_reset", rnn_net("GRU", attrs="linear_before_reset = 1")),
    *_hidden_and_input("rnn_relu", rnn_net("RNN", attrs='activations = ["Relu"]')),
    Case(
        "rnn_sigmoid_blocks",
        rnn_net("RNN", attrs='activations = ["Sigmoid"]'),
        "block:a zeroed unit does not stay 0",
        target="y",
    ),
    Case(
        "lstm_affine_blocks",
        rnn_net(
            "LSTM",
            attrs='activations = ["Sigmoid", "Affine", "Tanh"], activation_alpha = [1.0], activation_beta = [0.5]',
        ),
        "block:takes alpha/beta",
        target="y",
        oracle=False,  # onnxruntime's LSTM does take Affine, but the case only checks the block
    ),
    Case(
        "gru_softplus_blocks",
        rnn_net("GRU", attrs='activations = ["Sigmoid", "Softplus"]'),
        "block:do not keep a zeroed unit at 0",
        target="y",
    ),
    # the input side still prunes when the hidden side is blocked
    Case(
        "rnn_sigmoid_input_prunes",
        rnn_net("RNN", attrs='activations = ["Sigmoid"]'),
        target="pb",
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


def test_lstm_rows_and_columns_removed_per_gate():
    """hidden_size is rewritten and W/R/B keep the same units in every gate block."""
    case = next(c for c in CASES if c.id == "lstm_bidirectional_bias_hidden")
    model = build(case)
    res = check(case)
    node = next(n for n in res.model.graph if n.op_type == "LSTM")
    h = int(node.attributes["hidden_size"].value)
    assert h == H // 2
    b0 = model.graph.initializers["B"].const_value.numpy()
    r0 = model.graph.initializers["R"].const_value.numpy()
    b1 = res.model.graph.initializers["B"].const_value.numpy()
    r1 = res.model.graph.initializers["R"].const_value.numpy()
    w1 = res.model.graph.initializers["W"].const_value.numpy()
    assert w1.shape[:2] == (2, 4 * h) and r1.shape == (2, 4 * h, h) and b1.shape == (2, 8 * h)
    # the kept units, read from the first gate's bias; every other block keeps the same ones
    kept = [int(np.nonzero(b0[0, :H] == b1[0, k])[0][0]) for k in range(h)]
    for gate in range(8):
        np.testing.assert_array_equal(
            b1[:, gate * h : (gate + 1) * h], b0[:, [gate * H + u for u in kept]]
        )
    for gate in range(4):
        np.testing.assert_array_equal(
            r1[:, gate * h : (gate + 1) * h], r0[:, [gate * H + u for u in kept]][:, :, kept]
        )


def test_lstm_layout_1_with_reference_evaluator():
    """Batch-first layout: onnxruntime's CPU LSTM rejects layout 1, so the oracle is onnx's
    reference evaluator (zeroed original vs pruned)."""
    from onnx.reference import ReferenceEvaluator

    from spa_nm.io import to_proto_with_data
    from spa_nm.testing import random_feeds, zeroed_copy

    case = Case(
        "lstm_layout1",
        rnn_net("LSTM", layout=1, direction="bidirectional", opset=14),
        target="y",
        oracle=False,
    )
    model = build(case)
    res = check(case)
    feeds = random_feeds(model)
    ref = ReferenceEvaluator(to_proto_with_data(zeroed_copy(model, res))).run(None, feeds)[0]
    got = ReferenceEvaluator(to_proto_with_data(res.model)).run(None, feeds)[0]
    onnx.checker.check_model(to_proto_with_data(res.model), full_check=True)
    assert np.abs(ref - got).max() < 1e-5


def test_zero_condition_is_what_the_runtime_does():
    """Break the argument once: with a Sigmoid RNN a zeroed unit is 0.5 after one step, so a
    model pruned as if it were 0 would differ; the rule must have refused it."""
    case = next(c for c in CASES if c.id == "rnn_sigmoid_blocks")
    model = build(case)
    res = spa_nm.prune(model, 0.5, round_to=1)
    node = next(n for n in res.model.graph if n.op_type == "RNN")
    assert int(node.attributes["hidden_size"].value) == H


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_ratio_zero_is_identity(op):
    model = build(Case("id", rnn_net(op, direction="bidirectional")))
    res = spa_nm.prune(model, 0.0)
    assert res.report["params_after"] == res.report["params_before"]
    assert res.plan.n_removed == 0


# -- torch exports ---------------------------------------------------------------------------


def _torch_rnn(kind: str, bidirectional: bool):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(IN, IN)
            self.rnn = getattr(torch.nn, kind)(
                IN, H, num_layers=2, bidirectional=bidirectional, batch_first=True
            )
            self.head = torch.nn.Linear(H * (2 if bidirectional else 1), OUT)

        def forward(self, x):
            y, _ = self.rnn(torch.relu(self.proj(x)))
            return self.head(y)

    torch.manual_seed(0)
    return Net().eval(), torch.randn(BATCH, SEQ, IN)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "bidirectional", "exporter", "dynamic"),
    [
        ("LSTM", True, "legacy", False),
        ("GRU", False, "legacy", False),
        ("RNN", True, "legacy", False),
        ("LSTM", False, "dynamo", False),
        ("GRU", True, "dynamo", False),
        ("LSTM", True, "legacy", True),
        ("GRU", False, "legacy", True),
        ("RNN", False, "legacy", True),
    ],
)
def test_torch_export_prunes_hidden_units(tmp_path, kind, bidirectional, exporter, dynamic):
    """nn.LSTM / GRU / RNN (2 layers, batch_first) exported by torch: every layer's hidden
    units and the projection prune, the oracle holds, and hidden_size shrinks. With a dynamic
    batch and sequence, the legacy exporter builds one zero initial state for every layer
    from the run-time batch (ConstantOfShape of a Concat, sliced per layer): each layer gets
    its own copy, and its hidden entry is rewritten."""
    import warnings

    torch = pytest.importorskip("torch")
    from spa_nm.surgery import check_model
    from spa_nm.testing import assert_prune_equivalent

    net, x = _torch_rnn(kind, bidirectional)
    path = tmp_path / "rnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}} if dynamic else None
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes=axes)  # fmt: skip
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, verbose=False)
    model = spa_nm.load(path)
    assert any(n.op_type == kind for n in model.graph), "the exporter wrote no recurrent op"
    res = spa_nm.prune(model, 0.5, round_to=1)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    if dynamic:
        assert not isinstance(model.graph.inputs[0].shape[0], int)
        assert any(n.op_type == "ConstantOfShape" for n in res.model.graph)
    sizes = [int(n.attributes["hidden_size"].value) for n in res.model.graph if n.op_type == kind]
    assert sizes and all(s == H // 2 for s in sizes), sizes
    assert res.report["params_after"] < 0.6 * res.report["params_before"]


@pytest.mark.torch
def test_rnn_output_viewed_as_time_times_batch(tmp_path):
    """ddddocr's head: a bidirectional LSTM's [T, B, 2H] output viewed as [T * B, 2H] with the
    product written from two run-time shape entries (Shape -> Gather -> Mul), then a Linear.
    The Reshape target's channel entry is a constant part of its Concat: the hidden units
    prune, with a dynamic sequence."""
    import warnings

    torch = pytest.importorskip("torch")
    from spa_nm.surgery import check_model
    from spa_nm.testing import assert_prune_equivalent

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(IN, H, bidirectional=True)
            self.fc = torch.nn.Linear(2 * H, OUT)

        def forward(self, x):
            y, _ = self.rnn(x)
            t, b, c = y.shape
            return self.fc(y.view(t * b, c)).view(t, b, -1)

    torch.manual_seed(0)
    path = tmp_path / "rnn_view.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(SEQ, 1, IN),), str(path), dynamo=False, opset_version=12,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "t"}, "y": {0: "t"}})  # fmt: skip
    model = spa_nm.load(path)
    assert any(n.op_type == "Mul" for n in model.graph)  # t * b at run time
    res = spa_nm.prune(model, 0.5, round_to=1)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    (lstm,) = [n for n in res.model.graph if n.op_type == "LSTM"]
    assert int(lstm.attributes["hidden_size"].value) == H // 2
