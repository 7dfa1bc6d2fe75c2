"""spa_nm/rules/contrib.py: onnxruntime's fused element-wise ops prune exactly (the zero-group
oracle on onnxruntime CPU), their bias a member slice of its channel; the skip norms and
SimplifiedLayerNormalization block the normalized axis unless approximation is allowed, and
then equal the normalization over the kept channels (a numpy reference).

The integration tests optimize the small transformers of models/transformers_zoo.py with
onnxruntime's transformer optimizer (opt_level 0: its own fusions only; opt_level 1 adds
onnxruntime's basic graph rewrites, MatMul + Add into Reshape -> Gemm -> Reshape) and prune
them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import spa_nm
from spa_nm.io import to_proto_with_data
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run
from tests.rules._harness import Case, build, check, group_of, net, variants

MS = ', "com.microsoft" : 1'


def tokens(
    body: str, decl: str = "", *, x: str = "float[2, 5, 6] x", y: str = "float[2, 5, 3]"
) -> str:
    """``x -> h = MatMul(x, w1) [.., 8] -> BODY (writes a) -> y = MatMul(a, w2)``."""
    decls = ", ".join(d for d in ("float[6, 8] w1, float[8, 3] w2", decl) if d)
    body = "\n  ".join(line.strip() for line in body.strip().split("\n"))
    return f"""
<ir_version: 9, opset_import: ["" : 17{MS}]>
g ({x}) => ({y} y)
<{decls}>
{{
  h = MatMul (x, w1)
  {body}
  y = MatMul (a, w2)
}}
"""


def gemm_tokens(body: str, decl: str = "") -> str:
    """2-D tokens into a Gemm consumer, which can fold a constant a removed channel carries."""
    decls = ", ".join(d for d in ("float[6, 8] w1, float[3, 8] w2, float[3] c2", decl) if d)
    body = "\n  ".join(line.strip() for line in body.strip().split("\n"))
    return f"""
<ir_version: 9, opset_import: ["" : 17{MS}]>
g (float[5, 6] x) => (float[5, 3] y)
<{decls}>
{{
  h = MatMul (x, w1)
  {body}
  y = Gemm <transB = 1> (a, w2, c2)
}}
"""


CASES: list[Case] = [
    # element-wise activations: every axis passes (NCHW channels, or the last axis of tokens)
    Case("gelu_nchw", net("y = com.microsoft.Gelu (p)", domains=MS)),
    Case("gelu_tokens", tokens("a = com.microsoft.Gelu (h)"), target="h"),
    Case("quickgelu_default_alpha", tokens("a = com.microsoft.QuickGelu (h)"), target="h"),
    Case("quickgelu_nchw_alpha", net("y = com.microsoft.QuickGelu <alpha = 0.75> (p)", domains=MS)),
    Case("fastgelu_no_bias", tokens("a = com.microsoft.FastGelu (h)"), target="h"),
    # a bias over the last axis is a member slice of the hidden channel: it shrinks with it
    Case("fastgelu_bias", tokens("a = com.microsoft.FastGelu (h, b)", "float[8] b"), target="h",
         coupled=("a",)),
    Case("biasgelu", tokens("a = com.microsoft.BiasGelu (h, b)", "float[8] b"), target="h",
         coupled=("a",)),
    # MLP of a fused transformer: MatMul (with the bias in BiasGelu) -> MatMul
    Case("biasgelu_2d", gemm_tokens("a = com.microsoft.BiasGelu (h, b)", "float[8] b"), target="h"),
    # a removed channel carries sigmoid(0) = 0.5: the output is gelu(0.5 + 0) (its bias is
    # zeroed with it), which a Gemm folds into its bias exactly ...
    *[
        Case(f"{op.lower()}{'_bias' if args else ''}_constant_folds_into_gemm",
             gemm_tokens(f"s = Sigmoid (h)\n a = com.microsoft.{op} (s{args})", decl), target="h")
        for op, args, decl in (
            ("BiasGelu", ", b", "float[8] b"),
            ("FastGelu", ", b", "float[8] b"),
            ("FastGelu", "", ""),
            ("Gelu", "", ""),
            ("QuickGelu", "", ""),
        )
    ],
    # ... and a MatMul, without a bias, cannot absorb
    Case("biasgelu_constant_blocks_matmul",
         tokens("s = Sigmoid (h)\n a = com.microsoft.BiasGelu (s, b)", "float[8] b"), target="h",
         expect="block:cannot be folded"),
    # NCHW: the bias runs over W, not over the channels; a removed channel becomes gelu(bias[w]),
    # which varies along W: not a constant a consumer could fold
    Case("biasgelu_nchw_bias_over_width_blocks",
         net("y = com.microsoft.BiasGelu (p, bw)", "float[6] bw", consumer="3x3", domains=MS),
         expect="block:not a known constant"),
    # the skip norms block the normalized axis by default (approximate)
    *[
        Case(f"{op.lower()}_blocks",
             tokens(f"k = MatMul (x, wk)\n a = com.microsoft.{op} (h, k, {params})",
                    "float[6, 8] wk, float[8] g, float[8] be, float[8] bs"),
             target="h", expect="block:allowed with --allow-approximate")
        for op, params in (("SkipLayerNormalization", "g, be, bs"),
                           ("SkipSimplifiedLayerNormalization", "g, bs"))
    ],
    Case("simplifiedlayernorm_blocks",
         tokens("a = SimplifiedLayerNormalization (h, g)", "float[8] g"), target="h",
         expect="block:allowed with --allow-approximate"),
    Case("skiplayernorm_stats_used_blocks",
         tokens("k = MatMul (x, wk)\n n, m, iv = com.microsoft.SkipLayerNormalization (h, k, g)\n"
                "a = Mul (n, iv)", "float[6, 8] wk, float[8] g"),
         target="h", expect="block:statistics outputs are used", prune_kw={"allow_approximate": True}),
    Case("skiplayernorm_gamma_not_constant_blocks",
         tokens("k = MatMul (x, wk)\n a = com.microsoft.SkipLayerNormalization (h, k, gg)", "float[6, 8] wk",
                x="float[2, 5, 6] x, float[8] gg"),
         target="h", expect="block:not a per-channel constant", prune_kw={"allow_approximate": True}),
]  # fmt: skip


@variants(CASES)
def test_case(case):
    check(case)


def test_bias_is_a_bias_member():
    """The fused bias is a ``bias`` member of the hidden channel and loses the same entries."""
    case = next(c for c in CASES if c.id == "biasgelu")
    res = check(case)
    grp = group_of(res.graph, "h")
    roles = {p.name: p.role.value for p in grp.params}
    assert roles == {"w1": "weight_out", "b": "bias", "w2": "weight_in"}
    new = {n: v.const_value.shape for n, v in res.model.graph.initializers.items()}
    assert new["b"] == (4,) and new["w1"] == (6, 4) and new["w2"] == (4, 3)


# -- BiasAdd: no CPU kernel; the oracle runs it as two ONNX Adds ------------------------------


def _as_adds(model: ir.Model) -> ir.Model:
    """``BiasAdd(x, bias, skip)`` written as ``Add(Add(x, bias), skip)`` (its definition)."""
    proto = to_proto_with_data(model)
    nodes = []
    for n in proto.graph.node:
        if n.domain == "com.microsoft" and n.op_type == "BiasAdd":
            tmp = f"{n.output[0]}__x_plus_bias"
            nodes += [
                onnx.helper.make_node("Add", list(n.input[:2]), [tmp]),
                onnx.helper.make_node("Add", [tmp, n.input[2]], list(n.output)),
            ]
        else:
            nodes.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("skip", ["residual", "sigmoid"])
def test_bias_add(skip):
    """x + bias + skip: x, the residual and the output share the hidden channels, the bias is
    a member. With a sigmoid residual (0.5 where a channel is removed) the Gemm folds it."""
    k = "k = MatMul (x, wk)" if skip == "residual" else "k0 = MatMul (x, wk)\n k = Sigmoid (k0)"
    case = Case(
        f"biasadd_{skip}",
        gemm_tokens(f"{k}\n a = com.microsoft.BiasAdd (h, b, k)", "float[6, 8] wk, float[8] b"),
        target="h",
        coupled=("k", "a"),
        oracle=False,  # checked below on the model with BiasAdd as two Adds
    )
    res = check(case)
    grp = group_of(res.graph, "h")
    assert {p.name: p.role.value for p in grp.params if p.name == "b"} == {"b": "bias"}
    assert res.model.graph.initializers["b"].const_value.shape == (4,)
    assert bool(grp.folds) == (skip == "sigmoid")
    model = build(case)
    split = dataclasses.replace(res, model=_as_adds(res.model), source=_as_adds(res.source))
    check_model(split.model)
    assert_prune_equivalent(_as_adds(model), split, atol=1e-5)


# -- the norms with allow_approximate: the normalization over the kept channels --------------

_NORMS = {
    # id: (node, decl); h and k [2, 5, 8] or a broadcast skip; s is the input + skip + bias sum
    "skiplayernorm": (
        "a, , , s = com.microsoft.SkipLayerNormalization <epsilon = 0.001> (h, k, g, be, bs)",
        "float[8] g, float[8] be, float[8] bs",
    ),
    "skiplayernorm_no_beta_no_bias": (
        "a, , , s = com.microsoft.SkipLayerNormalization <epsilon = 0.001> (h, k, g)",
        "float[8] g",
    ),
    "skipsimplifiedlayernorm": (
        "a, , , s = com.microsoft.SkipSimplifiedLayerNormalization <epsilon = 0.001> (h, k, g, bs)",
        "float[8] g, float[8] bs",
    ),
    "simplifiedlayernorm": (
        "a = SimplifiedLayerNormalization <epsilon = 0.001> (h, g)",
        "float[8] g",
    ),
}
_SKIPS = {
    "same": "float[2, 5, 6] xk",
    "one_seq_hidden": "float[1, 5, 6] xk",
    "seq_hidden": "float[5, 6] xk",
}


def _norm_case(kind: str, skip: str) -> Case:
    node, decl = _NORMS[kind]
    skips = ", s" in node  # a skip norm: a skip input and the sum output
    text = f"""
<ir_version: 9, opset_import: ["" : 17{MS}]>
g (float[2, 5, 6] x{", " + _SKIPS[skip] if skips else ""}) => (float[2, 5, 3] y{", float[2, 5, 3] z" if skips else ""})
<float[6, 8] w1, float[8, 3] w2, {"float[6, 8] wk, float[8, 3] w3, " if skips else ""}{decl}>
{{
  h = MatMul (x, w1)
  {"k = MatMul (xk, wk)" if skips else ""}
  {node}
  y = MatMul (a, w2)
  {"z = MatMul (s, w3)" if skips else ""}
}}
"""
    return Case(f"{kind}-{skip}", text, target="h")


def _reference(kind: str, w: dict, feeds: dict, keep: list[int]) -> list[np.ndarray]:
    """The normalization over the kept channels only, computed from the original weights."""
    h = feeds["x"] @ w["w1"][:, keep]
    if kind == "simplifiedlayernorm":
        n = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-3) * w["g"][keep]
        return [n @ w["w2"][keep]]
    s = h + feeds["xk"] @ w["wk"][:, keep] + (w["bs"][keep] if "bs" in w else 0)
    if kind.startswith("skiplayernorm"):
        c = s - s.mean(-1, keepdims=True)
        n = c / np.sqrt((c**2).mean(-1, keepdims=True) + 1e-3) * w["g"][keep]
        n = n + (w["be"][keep] if "be" in w else 0)
    else:
        n = s / np.sqrt((s**2).mean(-1, keepdims=True) + 1e-3) * w["g"][keep]
    return [n @ w["w2"][keep], s @ w["w3"][keep]]


@pytest.mark.parametrize(
    ("kind", "skip"),
    [(k, "same") for k in _NORMS]
    + [("skiplayernorm", s) for s in ("one_seq_hidden", "seq_hidden")],
)
def test_norm_approximate(kind, skip):
    """Blocked by default; with allow_approximate every slice loses the same channels (W1 and
    Wk columns, γ, β, bias, W2 and W3 rows) and the pruned model is the normalization over the
    kept channels; the report's error is the measured one."""
    case = _norm_case(kind, skip)
    model = build(case)
    res = spa_nm.prune(model, 0.5, round_to=1)
    grp = group_of(res.graph, "h")
    assert not grp.prunable and any("allow-approximate" in b.reason for b in grp.blocked)
    skips = "wk" in model.graph.initializers
    if skips:
        assert group_of(res.graph, "k") is grp

    res = spa_nm.prune(model, 0.5, round_to=1, allow_approximate=True)
    grp = group_of(res.graph, "h")
    assert grp.prunable and grp.approximate and grp.id in res.plan.removed
    check_model(res.model)
    w = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    new = {n: v.const_value.numpy() for n, v in res.model.graph.initializers.items()}
    keep = [int(np.flatnonzero((w["w1"] == col[:, None]).all(0))[0]) for col in new["w1"].T]
    assert len(keep) == 4
    for name in ("g", "be", "bs"):  # the members lost the same channels
        if name in w:
            np.testing.assert_array_equal(new[name], w[name][keep])
    if skips:
        np.testing.assert_array_equal(new["wk"], w["wk"][:, keep])
    feeds = random_feeds(model)
    got = run(res.model, feeds)
    for g, r in zip(got, _reference(kind, w, feeds, keep), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5)
    ref = run(model, feeds)
    err = res.report["approximate"]["error"]
    worst = max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True))
    assert err["max_abs"] == pytest.approx(worst, rel=1e-6)
    assert err["max_abs"] > 1e-3  # removing channels really changed the statistics


# -- integration: transformers optimized by onnxruntime's transformer optimizer --------------

SLOW = pytest.mark.slow
MODELS = {"bert_tiny": ("bert", 128), "gpt2_tiny": ("gpt2", 256), "vit_tiny": ("vit", 128)}


@pytest.fixture(scope="module")
def optimized(export_dir, tmp_path_factory):
    """``optimized(name, exporter, level)``: the path of the export, optimized at opt_level
    ``level`` (once per module)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.transformers_zoo import cached_export

    out = tmp_path_factory.mktemp("ort_optimized")
    paths = {}

    def get(name: str, exporter: str, level: int = 0):
        if (name, exporter, level) not in paths:
            import logging

            from onnxruntime.transformers.optimizer import optimize_model

            src = cached_export(name, exporter, export_dir)
            level = logging.root.manager.disable
            logging.disable(logging.WARNING)  # the optimizer logs every fusion it tries
            try:
                m = optimize_model(
                    str(src),
                    model_type=MODELS[name][0],
                    num_heads=4,
                    hidden_size=64,
                    opt_level=level,
                )
            finally:
                logging.disable(level)
            p = out / f"{name}-{exporter}-opt{level}.onnx"
            m.save_model_to_file(str(p))
            paths[name, exporter, level] = p
        return paths[name, exporter, level]

    return get


@pytest.mark.zoo
@pytest.mark.torch
@pytest.mark.parametrize(
    ("name", "exporter", "level"),
    # the dynamo exporter takes seconds per model: gpt2 runs by default, all under -m slow
    [
        pytest.param(n, e, 0, marks=[SLOW] if e == "dynamo" and n != "gpt2_tiny" else [])
        for n in MODELS
        for e in ("legacy", "dynamo")
    ]
    # opt_level 1: Gelu without a bias after Gemm, whose output shapes ONNX inference cannot
    # reach past the contrib ops (onnxruntime's symbolic inference fills them in)
    + [pytest.param(n, "legacy", 1) for n in ("bert_tiny", "vit_tiny", "gpt2_tiny")],
)
def test_optimized_transformer_prunes(optimized, name, exporter, level):
    """Every MLP hidden group and the attention heads of each layer prune exactly; the fused
    bias of the activation shrinks with its channels."""
    model = spa_nm.load(optimized(name, exporter, level))
    ops = {n.op_type for n in model.graph if n.domain == "com.microsoft"}
    assert "SkipLayerNormalization" in ops and ops & {"BiasGelu", "FastGelu", "Gelu"}, ops
    res = spa_nm.prune(model, 0.5, round_to=1)
    hidden = MODELS[name][1]
    by_size: dict[int, list] = {}
    for g in res.graph.groups:
        by_size.setdefault(g.size, []).append(g)
    for size in (hidden, 4):  # MLP hidden channels and heads, one group per layer
        groups = by_size.get(size, [])
        assert len(groups) == 2, (
            size,
            [(g.size, [b.reason for b in g.blocked[:1]]) for g in res.graph.groups],
        )
        for g in groups:
            assert g.prunable and g.id in res.plan.removed, [b.reason for b in g.blocked]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    # the activation's bias (BiasGelu, FastGelu) lost half of the hidden channels
    biases = [
        n.inputs[1].name for n in res.model.graph
        if n.domain == "com.microsoft" and n.op_type in ("BiasGelu", "FastGelu") and len(n.inputs) > 1
    ]  # fmt: skip
    assert biases or level == 1  # opt_level 1 moves the bias into a Gemm
    for b in biases:
        assert math.prod(res.model.graph.initializers[b].const_value.shape) == hidden // 2


@pytest.mark.zoo
@pytest.mark.torch
def test_optimized_residual_stream_is_approximate(optimized):
    """The residual stream runs through SkipLayerNormalization: approximate, allowed on request."""
    model = spa_nm.load(optimized("bert_tiny", "legacy"))
    res = spa_nm.prune(model, 0.5, round_to=1)
    stream = [
        g
        for g in res.graph.groups
        if any("SkipLayerNormalization normalizes" in b.reason for b in g.blocked)
    ]
    assert len(stream) == 1 and stream[0].size == 64 and not stream[0].prunable
    res = spa_nm.prune(model, 0.5, round_to=1, allow_approximate=True)
    (grp,) = [g for g in res.graph.groups if g.approximate]
    assert grp.size == 64 and grp.id in res.plan.removed
    check_model(res.model)
    skips = [n for n in res.model.graph if n.op_type == "SkipLayerNormalization"]
    assert skips and all(n.inputs[2].const_value.shape == (32,) for n in skips)
    assert res.report["approximate"]["error"]["measured"]


@pytest.mark.zoo
@pytest.mark.torch
def test_optimized_gpt2_head_dims_through_a_nested_slot(optimized):
    """GPT-2 (legacy export) at opt_level 1 keeps a one-input cache Concat before Kᵀ: the
    rules meet the head axis alone before its (heads, head_dim) composite. The nested slot
    follows the composite, so head dims prune too, exactly."""
    model = spa_nm.load(optimized("gpt2_tiny", "legacy", 1))
    res = spa_nm.prune(model, 0.5, round_to=1, attention="head_dim")
    sizes = sorted(res.graph.groups[g].size for g in res.plan.removed)
    assert sizes == [32, 32, 256, 256], sizes  # Q·Kᵀ and V head dims (one fused group), MLPs
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
