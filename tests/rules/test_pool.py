"""spa_nm/rules/pool.py: pooling, reductions, Softmax, Resize and Pad pass channels through
where they leave the channel axis alone, carry constants they keep constant, and block
where they mix, reduce, resize or pad the channel axis."""

from __future__ import annotations

from tests.rules._harness import Case, check, net, variants

REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum"]  # fmt: skip

CASES: list[Case] = [
    # pooling: a constant stays constant (Sigmoid(0) = 0.5 folds into the 1x1 consumer)
    *[
        Case(f"{tag}_{act.lower()}", net(f"s = {act} (p)\n y = {pool} (s)", opset=opset))
        for tag, pool, opset in (
            ("maxpool", "MaxPool <kernel_shape = [2, 2], strides = [2, 2]>", 13),
            ("maxpool_pads_8", "MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]>", 8),
            ("maxpool_dilated_12", "MaxPool <kernel_shape = [2, 2], dilations = [2, 2]>", 12),
            ("averagepool", "AveragePool <kernel_shape = [3, 3], strides = [3, 3]>", 13),
            ("averagepool_pads_excluded", "AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]>", 13),
            ("globalaveragepool", "GlobalAveragePool", 13),
            ("globalmaxpool", "GlobalMaxPool", 13),
        )
        for act in ("Relu", "Sigmoid")
    ],
    Case(
        "averagepool_pads_counted_blocks",  # zero padding averaged in: the border is not 0.5
        net("s = Sigmoid (p)\n y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (s)"),
        "block:not a known constant",
    ),
    Case(
        "averagepool_pads_counted_of_zero",
        net("y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (p)", consumer="3x3"),
    ),
    Case("lppool", net("y = LpPool <kernel_shape = [2, 2], p = 2> (p)", consumer="3x3")),
    Case("globallppool", net("y = GlobalLpPool (p)", consumer="3x3")),
    Case(
        "lppool_of_constant_blocks",  # the rule does not compute the p-norm of a constant
        net("s = Sigmoid (p)\n y = LpPool <kernel_shape = [2, 2]> (s)"),
        "block:not a known constant",
    ),
    Case(
        "maxpool_indices_used_blocks",
        net("y, i = MaxPool <kernel_shape = [2, 2]> (p)\n f = Cast <to = 1> (i)\n z = Add (y, f)",
            consumer=None, out="float[2, 8, 5, 5]").replace("z = Add (y, f)", "out = Add (y, f)"),
        "block:indices",
    ),
    # Reduce*: axes attribute (13; ReduceSum's is an input from 13), input (18); keepdims 0/1
    *[
        Case(f"{op.lower()}_axes_attr_13", net(f"s = Sigmoid (p)\n y = {op} <axes = [2, 3]> (s)"))
        for op in REDUCE
        if op != "ReduceSum"
    ],
    *[
        Case(f"{op.lower()}_axes_input_18", net(f"s = Sigmoid (p)\n y = {op} (s, ax)", "int64[2] ax = {2, 3}", opset=18))
        for op in REDUCE
    ],
    Case("reducesum_axes_input_13", net("s = Sigmoid (p)\n y = ReduceSum (s, ax)", "int64[2] ax = {-1, -2}")),
    Case("reducesum_axes_attr_11", net("s = Sigmoid (p)\n y = ReduceSum <axes = [2, 3]> (s)", opset=11)),
    Case(
        "reducemean_keepdims0_gemm",
        net("y = ReduceMean <axes = [2, 3], keepdims = 0> (p)", consumer="gemm"),
    ),
    Case(
        "reducemax_keepdims0_18_gemm",
        net("y = ReduceMax <keepdims = 0> (p, ax)", "int64[2] ax = {3, 2}", opset=18, consumer="gemm"),
    ),
    Case(
        "reducemean_one_axis",
        net("r = ReduceMean <axes = [3], keepdims = 0> (p)\n y = Unsqueeze (r, ax)", "int64[1] ax = {3}", consumer="3x3"),
    ),
    Case(
        "reduce_noop_empty_axes_18",
        net("y = ReduceSum <noop_with_empty_axes = 1> (p)", opset=18, consumer="3x3"),
    ),
    Case(
        "reducelogsum_of_zero_blocks",  # log(0) = -inf
        net("a = Abs (p)\n y = ReduceLogSum <axes = [2, 3]> (a)"),
        "block:not a known constant",
    ),
    Case(
        "reduce_channel_axis_blocks",
        net("r = ReduceMean <axes = [1]> (p)\n y = Add (p, r)"),
        "block:ReduceMean reduces it",
    ),
    Case(
        "reduce_all_axes_blocks",
        net("r = ReduceMax (p)\n y = Add (p, r)"),
        "block:ReduceMax reduces it",
    ),
    Case(
        "reduce_runtime_axes_blocks",
        net("r = ReduceMean (p, ax)\n y = Add (p, r)", opset=18, inputs="int64[1] ax"),
        "block:computed at run time",
        oracle=False,  # the output rank depends on the fed axes
    ),
    # Softmax family: opset 13 normalizes along axis (default -1); before 13, over axis.. end
    # (default 1). A removed channel's row is not a known constant, so the trunk multiplies it.
    *[
        Case(
            f"{op.lower()}_{opset}_{tag}",
            net(f"s = {op} {attrs} (p)\n y = Mul (p, s)", opset=opset, consumer="3x3"),
            expect,
        )
        for op in ("Softmax", "LogSoftmax", "Hardmax")
        for opset, tag, attrs, expect in (
            (13, "axis3", "<axis = 3>", "prune"),
            (13, "default_axis", "", "prune"),
            (13, "axis1_blocks", "<axis = 1>", f"block:{op} normalizes over it"),
            (11, "axis2", "<axis = 2>", "prune"),
            (11, "default_axis_blocks", "", f"block:{op} normalizes over it"),
        )
    ],
    Case(
        "softmax_spatial_not_a_constant_blocks",
        net("y = Softmax <axis = 3> (p)"),
        "block:not a known constant",
    ),
    # Resize / Upsample: unchanged axes pass; a constant stays constant
    Case("resize_scales_10", net('s = Sigmoid (p)\n y = Resize <mode = "nearest"> (s, sc)', "float[4] sc = {1.0, 1.0, 2.0, 2.0}", opset=10)),
    Case("resize_scales_13", net('s = Sigmoid (p)\n y = Resize <mode = "nearest"> (s, , sc)', "float[4] sc = {1.0, 1.0, 2.0, 2.0}")),
    Case("resize_scales_linear_13", net('s = Sigmoid (p)\n y = Resize <mode = "linear"> (s, , sc)', "float[4] sc = {1.0, 1.0, 1.5, 1.5}")),
    Case(
        "resize_roi_scales_11",
        net('y = Resize <mode = "nearest"> (p, roi, sc)', "float[0] roi = {}, float[4] sc = {1.0, 1.0, 2.0, 2.0}", opset=11,
            consumer="3x3"),
    ),
    Case("resize_sizes_13", net('y = Resize <mode = "nearest"> (p, , , sz)', "int64[4] sz = {2, 8, 12, 12}", consumer="3x3")),
    Case(
        "resize_sizes_axes_18",
        net('y = Resize <mode = "nearest", axes = [2, 3]> (p, , , sz)', "int64[2] sz = {9, 9}", opset=18, consumer="3x3"),
    ),
    Case(
        "resize_channels_blocks",
        net('y = Resize <mode = "nearest"> (p, , sc)', "float[4] sc = {1.0, 2.0, 1.0, 1.0}", yc=16),
        "block:it is resized",
    ),
    Case(
        "resize_runtime_sizes_blocks",
        net('y = Resize <mode = "nearest"> (p, , , sz)', inputs="int64[4] sz"),
        "block:Resize sizes are computed at run time",
        oracle=False,  # random sizes are not a valid target
    ),
    Case("upsample_9", net('y = Upsample <mode = "nearest"> (p, sc)', "float[4] sc = {1.0, 1.0, 2.0, 2.0}", opset=9,
                            consumer="3x3")),
    Case("upsample_7", net('s = Sigmoid (p)\n y = Upsample <mode = "nearest", scales = [1.0, 1.0, 2.0, 2.0]> (s)', opset=7)),
    # Pad: attributes before 11, inputs from 11 (axes input from 18)
    Case("pad_attrs_10", net("y = Pad <pads = [0, 0, 1, 1, 0, 0, 1, 1]> (p)", opset=10, consumer="3x3")),
    Case("pad_inputs_13", net("y = Pad (p, pads)", "int64[8] pads = {0, 0, 1, 2, 0, 0, 2, 1}", consumer="3x3")),
    Case("pad_axes_18", net("y = Pad (p, pads, , ax)", "int64[4] pads = {1, 1, 1, 1}, int64[2] ax = {2, 3}", opset=18,
                             consumer="3x3")),
    Case(
        "pad_reflect_keeps_constant",
        net('s = Sigmoid (p)\n y = Pad <mode = "reflect"> (s, pads)', "int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}"),
    ),
    Case(
        "pad_same_value_keeps_constant",  # pad 0.5 around Sigmoid(0) = 0.5
        net("s = Sigmoid (p)\n y = Pad (s, pads, v)", "int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}, float v = {0.5}"),
    ),
    Case(
        "pad_zero_around_constant_blocks",
        net("s = Sigmoid (p)\n y = Pad (s, pads)", "int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}"),
        "block:not a known constant",
    ),
    Case(
        "pad_channels_blocks",
        net("y = Pad (p, pads)", "int64[8] pads = {0, 1, 0, 0, 0, 1, 0, 0}", yc=10),
        "block:it is padded",
    ),
    Case(
        "pad_runtime_blocks",
        net("y = Pad (p, pads)", inputs="int64[8] pads"),
        "block:Pad amounts are computed at run time",
        oracle=False,  # random pads are not a valid model
    ),
]


@variants(CASES)
def test_case(case):
    check(case)
