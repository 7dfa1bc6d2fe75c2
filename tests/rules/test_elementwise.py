"""spa_nm/rules/elementwise.py: unary ops pass channels through and map the constant a removed
channel carries; broadcasting ops couple full-extent operands and slice per-channel constants."""

from __future__ import annotations

import numpy as np
import pytest

import spa_nm
from spa_nm.facts import Slot
from spa_nm.testing import run
from tests.rules._harness import Case, build, check, net, variants

# (op as written in ONNX text, opset): every unary op of the rule
UNARY = [
    ("Relu", 13),
    ("LeakyRelu <alpha = 0.2>", 13),
    ("Elu", 13),
    ("Celu", 12),
    ("Selu", 13),
    ("ThresholdedRelu <alpha = 0.5>", 13),
    ("Sigmoid", 13),
    ("HardSigmoid", 13),
    ("HardSwish", 14),
    ("Tanh", 13),
    ("Softplus", 13),
    ("Softsign", 13),
    ("Mish", 18),
    ("Gelu", 20),
    ('Gelu <approximate = "tanh">', 20),
    ("Erf", 13),
    ("Exp", 13),
    ("Neg", 13),
    ("Abs", 13),
    ("Sign", 13),
    ("Floor", 13),
    ("Ceil", 13),
    ("Round", 11),
    ("Sin", 13),
    ("Cos", 13),
    ("Identity", 13),
    ("Dropout", 13),
    ("Cast <to = 1>", 13),
    ("Clip <min = -0.5, max = 6.0>", 6),
]


def _name(op: str) -> str:
    return op.split(" ")[0].lower() + ("_tanh" if "tanh" in op else "")


def _eval_unary(op: str, opset: int, values: np.ndarray) -> np.ndarray:
    """What onnxruntime computes for ``op`` on ``values`` (float32)."""
    n = values.size
    text = f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[{n}] a) => (float[{n}] b)
{{
  b = {op} (a)
}}
"""
    case = Case("eval", text)
    return run(build(case), {"a": values.astype(np.float32)})[0]


def _f0(op: str, opset: int) -> float:
    return float(_eval_unary(op, opset, np.zeros(1))[0])


CASES: list[Case] = []
for op, opset in UNARY:
    # a 1x1 consumer folds any constant f(0) into its bias
    CASES.append(Case(f"{_name(op)}_1x1", net(f"y = {op} (p)", opset=opset)))
    # a padded 3x3 consumer cannot fold: it prunes only when f(0) = 0 (computed by onnxruntime)
    CASES.append(
        Case(
            f"{_name(op)}_3x3",
            net(f"y = {op} (p)", opset=opset, consumer="3x3"),
            "prune" if _f0(op, opset) == 0 else "block:cannot be folded",
        )
    )

CASES += [
    # a carried constant through a unary op after a scalar shift (the BN + activation trap)
    Case("tanh_of_shift", net("a = Add (p, k)\n y = Tanh (a)", "float k = {0.7}")),
    Case("sqrt_of_relu_3x3", net("r = Relu (p)\n y = Sqrt (r)", consumer="3x3")),
    Case("log_of_abs_blocks", net("r = Abs (p)\n y = Log (r)"), "block:not a known constant"),
    Case("log_of_exp_3x3", net("e = Exp (p)\n y = Log (e)", consumer="3x3")),
    Case("reciprocal_blocks", net("y = Reciprocal (p)"), "block:not a known constant"),
    Case(
        "cast_fp16_roundtrip",
        net("a = Add (p, k)\n h = Cast <to = 10> (a)\n y = Cast <to = 1> (h)", "float k = {0.1}"),
    ),
    Case(
        "cast_double_roundtrip_3x3",
        net("h = Cast <to = 11> (p)\n y = Cast <to = 1> (h)", consumer="3x3"),
    ),
    Case(
        "dropout_mask_used_blocks",
        net("d, m = Dropout (p)\n mf = Cast <to = 1> (m)\n y = Add (d, mf)"),
        "block:mask",
    ),
    # Clip: bounds are attributes before opset 11, inputs from 11 (each optional)
    Case("clip_attrs_6", net("y = Clip <min = 0.0, max = 6.0> (p)", consumer="3x3", opset=6)),
    Case(
        "clip_inputs_11",
        net("y = Clip (p, lo, hi)", "float lo = {0.0}, float hi = {6.0}", opset=11, consumer="3x3"),
    ),
    Case("clip_min_only_13", net("y = Clip (p, lo)", "float lo = {0.5}")),
    Case("clip_max_only_13", net("y = Clip (p, , hi)", "float hi = {-0.5}")),
    Case(
        "clip_folds_clipped_shift",
        net("a = Add (p, k)\n y = Clip (a, lo, hi)", "float k = {7.5}, float lo = {0.0}, float hi = {6.0}"),
    ),
    Case(
        "clip_runtime_bound_blocks",
        net("hi = ReduceMax <keepdims = 0> (x)\n y = Clip (p, , hi)", opset=13),
        "block:not a known constant",
    ),
]

# -- broadcasting ops ---------------------------------------------------------------------------

Q = "float[8, 3, 1, 1] wq, float[8] bq"  # a second producer q = Conv(x) for residual-style cases

for op in ("Add", "Sub", "Mul", "Max", "Min"):
    CASES.append(
        Case(
            f"{op.lower()}_two_producers",
            net(f"q = Conv (x, wq, bq)\n y = {op} (p, q)", Q),
            coupled=("q", "y"),
        )
    )
CASES += [
    Case(
        "add_residual",
        net("q = Conv (p, wr, br)\n y = Add (q, p)", "float[8, 8, 1, 1] wr, float[8] br"),
        coupled=("q", "y"),
    ),
    Case(
        "div_two_activations_blocks",  # a removed channel is 0 / 0 in the zeroed original
        net("q = Conv (x, wq, bq)\n y = Div (p, q)", Q),
        "block:not a known constant",
    ),
    Case(
        "sum_three",
        net("q = Conv (x, wq, bq)\n r = Relu (p)\n y = Sum (p, q, r)", Q),
        coupled=("q", "r"),
    ),
    Case(
        "mean_three_with_scalar",
        net("q = Conv (x, wq, bq)\n y = Mean (p, q, k)", f"{Q}, float k = {{0.3}}"),
        coupled=("q",),
    ),
    Case("mean_with_scalar_3x3_blocks", net("y = Mean (p, k)", "float k = {0.3}", consumer="3x3"),
         "block:cannot be folded"),
]

# per-channel constants ([C,1,1] or [1,C,1,1]) are member slices; both operand orders
for op in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
    for shape in ("8, 1, 1", "1, 8, 1, 1"):
        tag = shape.count(",")
        CASES.append(
            Case(
                f"{op.lower()}_per_channel_{tag}d",
                net(f"y = {op} (p, var_k)", f"float[{shape}] var_k", consumer="3x3"),
            )
        )
        if op != "Div":
            CASES.append(
                Case(
                    f"{op.lower()}_per_channel_{tag}d_first",
                    net(f"y = {op} (var_k, p)", f"float[{shape}] var_k", consumer="3x3"),
                )
            )

CASES += [
    # scalar constants: the removed channel carries op(0, k)
    Case("add_scalar_1x1", net("y = Add (p, k)", "float k = {0.7}")),
    Case("add_scalar_3x3_blocks", net("y = Add (p, k)", "float k = {0.7}", consumer="3x3"),
         "block:cannot be folded"),
    Case("mul_scalar_3x3", net("y = Mul (p, k)", "float k = {0.7}", consumer="3x3")),
    Case("div_scalar_3x3", net("y = Div (p, k)", "float k = {2.0}", consumer="3x3")),
    Case("div_by_activation_scalar_blocks", net("y = Div (k, p)", "float k = {2.0}"),
         "block:not a known constant"),
    Case("max_scalar_1x1", net("y = Max (p, k)", "float k = {0.5}")),
    Case("min_scalar_1x1", net("y = Min (p, k)", "float k = {-0.3}")),
    Case("pow_scalar_exponent_3x3", net("y = Pow (p, k)", "float k = {2.0}", consumer="3x3")),
    Case("pow_scalar_base_1x1", net("y = Pow (k, p)", "float k = {2.0}")),
    Case(
        "pow_per_channel_exponent_blocks",
        net("y = Pow (p, k)", "float[8, 1, 1] k = {2, 2, 2, 2, 3, 3, 3, 3}"),
        "block:per-channel exponent",
    ),
    # a spatial map broadcast over channels: x * map is 0, x + map is not a constant
    Case("mul_spatial_map_3x3", net("y = Mul (p, k)", "float[1, 1, 6, 6] k", consumer="3x3")),
    Case("add_spatial_map_blocks", net("y = Add (p, k)", "float[1, 1, 6, 6] k"),
         "block:not a known constant"),
    # PRelu: per-channel slope is a member slice; a shared slope broadcasts
    Case("prelu_per_channel", net("y = PRelu (p, s)", "float[8, 1, 1] s", consumer="3x3")),
    Case("prelu_per_channel_9", net("y = PRelu (p, s)", "float[8, 1, 1] s", opset=9)),
    Case("prelu_scalar", net("y = PRelu (p, s)", "float[1] s", consumer="3x3")),
    Case(
        "prelu_of_shift",
        net("a = Add (p, k)\n y = PRelu (a, s)", "float k = {-1.5}, float[8, 1, 1] s"),
    ),
    # SE gate: GAP -> Conv -> Relu -> Conv -> gate -> Mul with the trunk
    *[
        Case(
            f"se_gate_{gate.lower()}_{consumer}",
            net(
                f"""
                g = GlobalAveragePool (p)
                h = Conv (g, ws1, bs1)
                hr = Relu (h)
                e = Conv (hr, ws2, bs2)
                gate = {gate} (e)
                y = Mul (p, gate)
                """,
                "float[4, 8, 1, 1] ws1, float[4] bs1, float[8, 4, 1, 1] ws2, float[8] bs2",
                consumer=consumer,
            ),
            coupled=("e", "gate", "y"),
            separate=("h",),
        )
        for gate in ("HardSigmoid", "Sigmoid")
        for consumer in ("1x1", "3x3")
    ],
    Case(
        "se_squeeze_group",
        net(
            """
            g = GlobalAveragePool (p)
            h = Conv (g, ws1, bs1)
            hr = Relu (h)
            e = Conv (hr, ws2, bs2)
            gate = HardSigmoid (e)
            y = Mul (p, gate)
            """,
            "float[4, 8, 1, 1] ws1, float[4] bs1, float[8, 4, 1, 1] ws2, float[8] bs2",
        ),
        target="h",
        coupled=("hr",),
    ),
    # one initializer read by two Muls ties the two producers' channels
    Case(
        "shared_per_channel_constant",
        net(
            "q = Conv (x, wq, bq)\n a = Mul (p, k)\n b = Mul (q, k)\n y = Concat <axis = 1> (a, b)",
            f"{Q}, float[8, 1, 1] k",
            yc=16,
        ),
        coupled=("q",),
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


# -- the constant a removed channel carries, against onnxruntime ------------------------------

KAPPA = np.array([0.7, -1.3, 2.5, -0.2, 0.0, 3.5, -4.0, 1.0], dtype=np.float32)


@pytest.mark.parametrize(("op", "opset"), UNARY, ids=[_name(o) for o, _ in UNARY])
def test_unary_carries_what_onnxruntime_computes(op, opset):
    """The constant the rule says ``op`` outputs for a removed channel that carries k is
    ``op(k)`` as onnxruntime evaluates it (k: positive, negative, zero, large)."""
    dg = spa_nm.analyze(build(Case("kappa", net(f"y = {op} (p)", opset=opset))))
    (i,) = [i for i, n in enumerate(dg.view.nodes) if n.outputs[0].name == "y"]
    got = dg.facts[i].transfer({Slot("p", (1,)): KAPPA.astype(np.float64)})[Slot("y", (1,))]
    want = _eval_unary(op, opset, KAPPA).astype(np.float64)
    # a few float32 ulps: onnxruntime computes in float32 (Gelu-tanh cancels near -4)
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=2e-7)
