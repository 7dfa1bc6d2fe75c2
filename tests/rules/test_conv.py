"""spa_nm/rules/conv.py: Conv and ConvTranspose cut channel spaces (group 1), tie conv-groups
(grouped) or pass channels through (depthwise), and fold carried constants into their bias."""

from __future__ import annotations

import numpy as np

from tests.rules._harness import Case, check, net, variants

CASES: list[Case] = []


def _both_sides(id: str, text: str, depthwise: bool = False, **kw) -> list[Case]:
    """The conv under test (``y = Conv(p)``) as a consumer (group of ``p``) and as a producer
    (group of ``y``); a depthwise conv passes channels through, so both are one group."""
    if depthwise:
        return [Case(id, text, coupled=("y",), **kw)]
    return [
        Case(f"{id}_in", text, separate=("y",), **kw),
        Case(f"{id}_out", text, target="y", separate=("p",), **kw),
    ]


# (id, attributes, weight shape, channels of y)
CONVS = [
    ("g1_1x1", "", "8, 8, 1, 1", 8),
    ("g1_3x3_pads", "<pads = [1, 1, 1, 1]>", "6, 8, 3, 3", 6),
    ("g1_3x3_valid_stride2", "<strides = [2, 2]>", "6, 8, 3, 3", 6),
    ("g1_dilated", "<dilations = [2, 2], pads = [2, 2, 2, 2]>", "6, 8, 3, 3", 6),
    ("g1_same_upper", '<auto_pad = "SAME_UPPER", kernel_shape = [3, 3]>', "6, 8, 3, 3", 6),
    ("grouped_2", "<group = 2, pads = [1, 1, 1, 1]>", "8, 4, 3, 3", 8),
    ("grouped_4", "<group = 4>", "8, 2, 1, 1", 8),
    ("grouped_2_widen", "<group = 2>", "16, 4, 1, 1", 16),
]
for cid, attrs, wshape, yc in CONVS:
    for bias in (True, False):
        args = "p, w, b" if bias else "p, w"
        decl = f"float[{wshape}] w" + (f", float[{yc}] b" if bias else "")
        CASES += _both_sides(
            f"conv_{cid}_{'bias' if bias else 'nobias'}",
            net(f"y = Conv {attrs} ({args})", decl, yc=yc),
        )

# depthwise: multiplier 1 and 2
for m in (1, 2):
    for bias in (True, False):
        args = "p, w, b" if bias else "p, w"
        decl = f"float[{8 * m}, 1, 3, 3] w" + (f", float[{8 * m}] b" if bias else "")
        CASES += _both_sides(
            f"conv_depthwise_m{m}_{'bias' if bias else 'nobias'}",
            net(f"y = Conv <group = 8, pads = [1, 1, 1, 1]> ({args})", decl, yc=8 * m),
            depthwise=True,
        )

# other ranks: Conv1d and Conv3d
CASES += _both_sides(
    "conv1d", net("y = Conv <pads = [1, 1]> (p, w, b)", "float[6, 8, 3] w, float[6] b", yc=6, rank=3)
)
CASES += _both_sides(
    "conv3d",
    net("y = Conv (p, w, b)", "float[6, 8, 1, 1, 1] w, float[6] b", yc=6, rank=5),
)
CASES += _both_sides(
    "conv1d_depthwise",
    net("y = Conv <group = 8> (p, w)", "float[8, 1, 3] w", rank=3),
    depthwise=True,
)

CASES += [
    Case(
        "conv_weight_is_input_blocks",
        net("y = Conv (p, w)", inputs="float[8, 8, 1, 1] w"),
        "block:weight is not a constant initializer",
    ),
    Case(
        "conv_bias_is_input_blocks",
        net("y = Conv (p, w, b)", "float[8, 8, 1, 1] w", inputs="float[8] b"),
        "block:bias is not a constant initializer",
    ),
    # a removed channel carries Sigmoid(0) = 0.5 into the conv under test: it folds into the
    # bias where no padding is read (1x1, valid 3x3, SAME with a 1x1 kernel), for each group
    *[
        Case(
            f"conv_folds_{cid}",
            net(f"s = Sigmoid (p)\n y = Conv {attrs} ({args})", decl, yc=yc),
        )
        for cid, attrs, args, decl, yc in [
            ("1x1_bias", "", "s, w, b", "float[6, 8, 1, 1] w, float[6] b", 6),
            ("1x1_new_bias", "", "s, w", "float[6, 8, 1, 1] w", 6),
            ("3x3_valid", "", "s, w, b", "float[6, 8, 3, 3] w, float[6] b", 6),
            ("strided", "<strides = [2, 2]>", "s, w", "float[6, 8, 1, 1] w", 6),
            ("same_1x1", '<auto_pad = "SAME_UPPER">', "s, w, b", "float[6, 8, 1, 1] w, float[6] b", 6),
            ("grouped", "<group = 2>", "s, w, b", "float[8, 4, 1, 1] w, float[8] b", 8),
            ("grouped_new_bias", "<group = 4>", "s, w", "float[8, 2, 3, 3] w", 8),
        ]
    ],
    Case(
        "conv_padded_cannot_fold_blocks",
        net("s = Sigmoid (p)\n y = Conv <pads = [1, 1, 1, 1]> (s, w, b)", "float[6, 8, 3, 3] w, float[6] b", yc=6),
        "block:cannot be folded",
    ),
    Case(
        "conv_same_3x3_cannot_fold_blocks",
        net('s = Sigmoid (p)\n y = Conv <auto_pad = "SAME_LOWER"> (s, w)', "float[6, 8, 3, 3] w", yc=6),
        "block:cannot be folded",
    ),
    # depthwise passes the constant on: Sigmoid(0) * sum(w) + b reaches the 1x1 consumer
    Case(
        "conv_depthwise_carries_constant",
        net("s = Sigmoid (p)\n y = Conv <group = 8> (s, w, b)", "float[8, 1, 1, 1] w, float[8] b"),
    ),
]

# -- ConvTranspose ---------------------------------------------------------------------------

UP = "<strides = [2, 2], kernel_shape = [2, 2]>"
for bias in (True, False):
    args = "p, w, b" if bias else "p, w"
    tag = "bias" if bias else "nobias"
    CASES += _both_sides(
        f"convtranspose_g1_{tag}",
        net(f"y = ConvTranspose {UP} ({args})", "float[8, 6, 2, 2] w" + (", float[6] b" if bias else ""), yc=6),
    )
    for m in (1, 2):
        CASES += _both_sides(
            f"convtranspose_depthwise_m{m}_{tag}",
            net(
                f"y = ConvTranspose <group = 8, strides = [2, 2], kernel_shape = [2, 2]> ({args})",
                f"float[8, {m}, 2, 2] w" + (f", float[{8 * m}] b" if bias else ""),
                yc=8 * m,
            ),
            depthwise=True,
        )
CASES += _both_sides(
    "convtranspose_pads",
    net("y = ConvTranspose <pads = [1, 1, 1, 1]> (p, w, b)", "float[8, 6, 3, 3] w, float[6] b", yc=6),
)
CASES += [
    Case(
        "convtranspose_grouped_blocks",
        net("y = ConvTranspose <group = 2, strides = [2, 2], kernel_shape = [2, 2]> (p, w)",
            "float[8, 3, 2, 2] w", yc=6),
        "block:grouped ConvTranspose",
    ),
    # output_shape names the spatial sides only: channels stay free
    *_both_sides(
        "convtranspose_output_shape",
        net("y = ConvTranspose <strides = [2, 2], output_shape = [13, 13]> (p, w)",
            "float[8, 6, 2, 2] w", yc=6),
    ),
    Case(
        "convtranspose_cannot_fold_blocks",  # no fold: a carried constant blocks
        net(f"s = Sigmoid (p)\n y = ConvTranspose {UP} (s, w)", "float[8, 6, 2, 2] w", yc=6),
        "block:cannot be folded",
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


def _removed(res, value: str) -> np.ndarray:
    """Which channels of ``value`` the plan removes (a boolean per channel)."""
    from spa_nm.facts import Slot

    dg = res.graph
    units = np.concatenate(list(res.plan.removed.values()))
    return np.isin(dg.elements(Slot(value, (1,))), units)


def _channels(res, name: str) -> int:
    (v,) = [v for n in res.model.graph for v in n.outputs if v.name == name]
    return int(v.shape[1])


def _node(res, out: str):
    (node,) = [n for n in res.model.graph if n.outputs[0].name == out]
    return node


def test_grouped_conv_removes_the_same_index_in_every_group():
    """group 2: input j and j + C/2 go together (likewise outputs), so C/g stays integral and
    ``group`` stays 2."""
    (case,) = [c for c in CASES if c.id == "conv_grouped_2_widen_bias_in"]
    res = check(case)
    for value, n in (("p", 8), ("y", 16)):
        dead = _removed(res, value)
        assert dead.any()
        np.testing.assert_array_equal(dead[: n // 2], dead[n // 2 :])
    assert _node(res, "y").attributes["group"].value == 2
    assert res.model.graph.initializers["w"].const_value.shape[1] * 2 == _channels(res, "p")


def test_depthwise_multiplier_keeps_whole_channel_blocks():
    """Depthwise with multiplier 2: output channels 2c and 2c + 1 go with input channel c, and
    ``group`` becomes the new channel count."""
    (case,) = [c for c in CASES if c.id == "conv_depthwise_m2_bias"]
    res = check(case)
    dead_in, dead_out = _removed(res, "p"), _removed(res, "y")
    np.testing.assert_array_equal(np.repeat(dead_in, 2), dead_out)
    kept = _channels(res, "p")
    assert _node(res, "y").attributes["group"].value == kept
    assert res.model.graph.initializers["w"].const_value.shape[0] == 2 * kept
