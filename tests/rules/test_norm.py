"""spa_nm/rules/norm.py: per-channel norms (BatchNorm, InstanceNorm) pass channels through with
their parameters as member slices; norms whose statistics span the channel axis block it."""

from __future__ import annotations

import pytest

import spa_nm
from tests.rules._harness import Case, build, check, group_of, net, variants

BN = "float[8] s, float[8] t, float[8] m, float[8] var"  # random scale, shift, mean; var > 0

CASES: list[Case] = [
    # BatchNorm with random (non-trivial) parameters, several opsets and epsilons
    *[
        Case(
            f"batchnorm_{opset}",
            net(f"y = BatchNormalization {attrs} (p, s, t, m, var)", BN, opset=opset, consumer="3x3"),
        )
        for opset, attrs in ((9, ""), (14, "<epsilon = 0.1>"), (15, "<momentum = 0.5>"))
    ],
    Case(
        "batchnorm_conv1d",
        net("y = BatchNormalization (p, s, t, m, var)", BN, rank=3, consumer="3x3"),
    ),
    # the BN + activation trap (METHODS.md §1.4): a removed channel leaves BN as 0 (γ, β zeroed),
    # Sigmoid turns it into 0.5; a 1x1 consumer without padding folds 0.5·Σw into its bias ...
    Case(
        "bn_trap_sigmoid_1x1_folds",
        net("n = BatchNormalization (p, s, t, m, var)\n y = Sigmoid (n)", BN),
    ),
    Case(
        "bn_trap_sigmoid_valid_3x3_folds",
        net(
            "n = BatchNormalization (p, s, t, m, var)\n a = Sigmoid (n)\n y = Conv (a, w2, b2)",
            f"{BN}, float[6, 8, 3, 3] w2, float[6] b2",
            yc=6,
        ),
    ),
    # ... a padded 3x3 consumer reads the constant at the border only partly: blocked
    Case(
        "bn_trap_sigmoid_padded_3x3_blocks",
        net("n = BatchNormalization (p, s, t, m, var)\n y = Sigmoid (n)", BN, consumer="3x3"),
        "block:cannot be folded",
    ),
    Case(
        "bn_relu_padded_3x3",  # Relu(0) = 0: nothing to fold
        net("n = BatchNormalization (p, s, t, m, var)\n y = Relu (n)", BN, consumer="3x3"),
    ),
    Case(
        "batchnorm_training_blocks",
        net("y, rm, rv = BatchNormalization <training_mode = 1> (p, s, t, m, var)", BN, opset=15),
        "block:training mode",
        oracle=False,  # onnxruntime's inference build has no training-mode BatchNormalization
    ),
    Case(
        "batchnorm_scale_is_input_blocks",
        net("y = BatchNormalization (p, s, t, m, var)", "float[8] t, float[8] m, float[8] var",
            inputs="float[8] s"),
        "block:not a constant initializer",
    ),
    # InstanceNorm: statistics per (sample, channel)
    Case(
        "instancenorm",
        net("y = InstanceNormalization (p, s, t)", "float[8] s, float[8] t", consumer="3x3"),
    ),
    Case(
        "instancenorm_eps_conv1d",
        net("y = InstanceNormalization <epsilon = 0.01> (p, s, t)", "float[8] s, float[8] t",
            rank=3, consumer="3x3"),
    ),
    Case(
        "instancenorm_sigmoid_1x1_folds",
        net("n = InstanceNormalization (p, s, t)\n y = Sigmoid (n)", "float[8] s, float[8] t"),
    ),
    # GroupNorm: whole groups of C/G channels go (the others' statistics are unchanged), with
    # num_groups rewritten (opset 18's per-group scale is deprecated and fails the checker; 21
    # has a per-channel scale)
    *[
        Case(
            f"groupnorm_{g}",
            net(f"y = GroupNormalization <num_groups = {g}> (p, s, t)", "float[8] s, float[8] t",
                opset=21, consumer="3x3"),
        )
        for g in (2, 4, 8)
    ],
    # the legacy exporter's GroupNorm: Reshape to [N, G, -1], InstanceNorm per group, Reshape
    # back, per-channel affine
    *[
        Case(
            f"groupnorm_decomposed_{g}",
            net(
                "r = Reshape (p, gshape)\n n = InstanceNormalization (r, one, zero)\n"
                "b = Reshape (n, back)\n m = Mul (b, gam)\n y = Add (m, bet)",
                f"int64[3] gshape = {{0, {g}, -1}}, float[{g}] one, float[{g}] zero, "
                "int64[4] back = {2, 8, 6, 6}, float[8, 1, 1] gam, float[8, 1, 1] bet",
                consumer="3x3",
            ),
        )
        for g in (2, 4)
    ],
    # LayerNorm over the channel axis: blocked
    Case(
        "layernorm_axis1_blocks",
        net("y = LayerNormalization <axis = 1> (p, s, t)", "float[8, 6, 6] s, float[8, 6, 6] t", opset=17),
        "block:LayerNormalization normalizes over",
    ),
    Case(
        "layernorm_channels_last_blocks",
        net(
            "a = Transpose <perm = [0, 2, 3, 1]> (p)\n n = LayerNormalization (a, s, t)\n"
            "y = Transpose <perm = [0, 3, 1, 2]> (n)",
            "float[8] s, float[8] t",
            opset=17,
        ),
        "block:LayerNormalization normalizes over",
    ),
    # LayerNorm over spatial axes: channels pass; a removed channel becomes the (spatially
    # varying) shift t, not a constant a consumer could fold ...
    Case(
        "layernorm_spatial_blocks_fold",
        net("y = LayerNormalization <axis = 2> (p, s, t)", "float[6, 6] s, float[6, 6] t", opset=17),
        "block:not a known constant",
    ),
    # ... unless the trunk multiplies it back to 0
    Case(
        "layernorm_spatial_times_trunk",
        net(
            "n = LayerNormalization <axis = -1> (p, s, t)\n y = Mul (n, p)",
            "float[6] s, float[6] t",
            opset=17,
            consumer="3x3",
        ),
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


# -- approximate: the residual stream through LayerNorm / RMSNorm (--allow-approximate) -----

_TOKENS = """
<ir_version: {ir}, opset_import: ["" : {opset}]>
g (float[2, 5, 6] x) => (float[2, 5, 3] y)
<float[6, 8] w1, float[8] b1, float[8] g, float[8] b, float[8, 3] w2>
{{
  h = MatMul (x, w1)
  hb = Add (h, b1)
  {norm}
  y = MatMul (n, w2)
}}
"""
_NORMS = {
    "layernorm": (17, "n = LayerNormalization <axis = -1, epsilon = 0.001> (hb, g, b)"),
    "rmsnorm_op": (23, "n = RMSNormalization <axis = -1, epsilon = 0.001> (hb, g)"),
    # RMSNorm as exporters write it: x * rsqrt(mean(x^2) + eps) * g
    "rmsnorm_decomposed": (
        17,
        "two = Constant <value = float {2.0}> ()\n sq = Pow (hb, two)\n"
        " ms = ReduceMean <axes = [-1], keepdims = 1> (sq)\n eps = Constant <value = float {0.001}> ()\n"
        " me = Add (ms, eps)\n rt = Sqrt (me)\n inv = Reciprocal (rt)\n nx = Mul (hb, inv)\n n = Mul (nx, g)",
    ),
}


def _norm_model(kind: str):
    import onnx.parser

    opset, norm = _NORMS[kind]
    text = _TOKENS.format(ir=11 if opset >= 23 else 9, opset=opset, norm=norm)
    onnx.parser.parse_model(text)  # fails loudly on a typo
    return build(Case(kind, text))


def _reference(kind: str, w: dict, x, keep):
    """The normalization computed over the kept channels only, from the original weights."""
    import numpy as np

    h = x @ w["w1"][:, keep] + w["b1"][keep]
    if kind == "layernorm":
        mu = h.mean(-1, keepdims=True)
        n = (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-3) * w["g"][keep] + w["b"][keep]
    else:
        n = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-3) * w["g"][keep]
    return n @ w["w2"][keep]


@pytest.mark.parametrize("kind", sorted(_NORMS))
def test_norm_over_channels_blocks_unless_approximate(kind):
    model = _norm_model(kind)
    res = spa_nm.prune(model, 0.5, round_to=1)
    grp = group_of(res.graph, "hb")
    assert not grp.prunable
    assert any("allowed with --allow-approximate" in b.reason for b in grp.blocked)
    assert "approximate" not in res.report


@pytest.mark.parametrize("kind", sorted(_NORMS))
def test_norm_over_channels_approximate(kind):
    """Removal keeps every slice consistent (W1 columns, b1, γ, β, W2 rows): the pruned model
    is the normalization over the kept channels; the report's error is the measured one."""
    import numpy as np

    from spa_nm.testing import random_feeds, run

    model = _norm_model(kind)
    res = spa_nm.prune(model, 0.5, round_to=1, allow_approximate=True)
    grp = group_of(res.graph, "hb")
    assert grp.prunable and grp.approximate and grp.id in res.plan.removed
    w = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    w1_new = res.model.graph.initializers["w1"].const_value.numpy()
    keep = [int(np.flatnonzero((w["w1"] == col[:, None]).all(0))[0]) for col in w1_new.T]
    assert len(keep) == 4
    feeds = random_feeds(model)
    got = run(res.model, feeds)[0]
    np.testing.assert_allclose(got, _reference(kind, w, feeds["x"], keep), atol=1e-5)
    ref = run(model, feeds)[0]
    err = res.report["approximate"]["error"]
    assert err["measured"] and err["max_abs"] == pytest.approx(float(np.abs(got - ref).max()), rel=1e-6)
    assert err["mean_abs"] == pytest.approx(float(np.abs(got - ref).mean()), rel=1e-6)
    assert err["max_abs"] > 1e-3  # removing channels really changed the statistics
    assert res.report["approximate"]["groups"][0]["reasons"]


# -- LRN: each channel divided by its neighbours' energy (approximate) ------------------------

_LRN = """
<ir_version: 9, opset_import: ["" : 13]>
g (float[2, 3, 5, 5] x) => (float[2, 4, 5, 5] y)
<float[8, 3, 1, 1] w1, float[8] b1, float[4, 8, 1, 1] w2>
{
  h = Conv (x, w1, b1)
  n = LRN <size = 3, alpha = 0.5, beta = 0.75, bias = 1.0> (h)
  y = Conv (n, w2)
}
"""


def _lrn_reference(w, x, keep):
    """LRN (ONNX definition) over the kept channels only, from the original weights."""
    import numpy as np

    h = np.einsum("nchw,kc->nkhw", x, w["w1"][keep, :, 0, 0]) + w["b1"][keep][None, :, None, None]
    c = h.shape[1]
    sq = np.zeros_like(h)
    for i in range(c):  # window: channels i - 1 .. i + 1 (size 3)
        sq[:, i] = (h[:, max(0, i - 1) : min(c, i + 2)] ** 2).sum(1)
    n = h / (1.0 + 0.5 / 3 * sq) ** 0.75
    return np.einsum("nchw,kc->nkhw", n, w["w2"][:, keep, 0, 0])


def test_lrn_blocks_unless_approximate_then_is_lrn_over_the_kept_channels():
    import numpy as np

    from spa_nm.testing import random_feeds, run

    model = build(Case("lrn", _LRN))
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert not group_of(res.graph, "h").prunable and res.plan.n_removed == 0
    res = spa_nm.prune(model, 0.5, round_to=1, allow_approximate=True)
    grp = group_of(res.graph, "h")
    assert grp.prunable and grp.approximate and grp.id in res.plan.removed
    w = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    kept = res.model.graph.initializers["w1"].const_value.numpy()
    keep = [int(np.flatnonzero((w["w1"] == row[None]).all((1, 2, 3)))[0]) for row in kept]
    assert len(keep) == 4
    feeds = random_feeds(model)
    got = run(res.model, feeds)[0]
    np.testing.assert_allclose(got, _lrn_reference(w, feeds["x"], keep), atol=1e-4)
    assert res.report["approximate"]["error"]["measured"]
