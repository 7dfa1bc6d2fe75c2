"""spa_nm/rules/misc.py: Constant, Shape/Size and Gather; and ops without a rule, which block
their channels instead of being guessed."""

from __future__ import annotations


from tests.rules._harness import Case, check, net, variants

CASES: list[Case] = [
    # Constant nodes: data whose slices the reading op declares
    Case(
        "constant_per_channel_mul",
        net("k = Constant <value = float[8, 1, 1] {1, 2, 3, 4, 5, 6, 7, 8}> ()\n y = Mul (p, k)", consumer="3x3"),
    ),
    Case("constant_scalar_add", net("k = Constant <value_float = 0.5> ()\n y = Add (p, k)")),
    Case(
        "constant_reshape_target",
        net("sh = Constant <value_ints = [2, 288]> ()\n f = Reshape (p, sh)\n out = MatMul (f, w)",
            "float[288, 4] w", consumer=None, out="float[2, 4]"),
    ),
    # Shape / Size of a static channel axis fold to constants before analysis ...
    Case(
        "shape_static_folds",
        net("s = Shape (p)\n f = Cast <to = 1> (s)\n r = ReduceSum <keepdims = 0> (f)\n y = Mul (p, r)", consumer="3x3"),
    ),
    Case("size_static_folds", net("s = Size (p)\n f = Cast <to = 1> (s)\n y = Mul (p, f)", consumer="3x3")),
    # ... with a dynamic batch they are read at run time: the channel count must not change
    Case(
        "shape_dynamic_blocks",
        net("s = Shape (p)\n f = Cast <to = 1> (s)\n r = ReduceSum <keepdims = 0> (f)\n y = Mul (p, r)",
            batch="N"),
        "block:Shape reads the channel count",
    ),
    Case(
        "size_dynamic_blocks",
        net("s = Size (p)\n f = Cast <to = 1> (s)\n y = Mul (p, f)", batch="N"),
        "block:Size reads the channel count",
    ),
    Case(
        "shape_of_batch_only_15",  # start/end leave the channel axis out
        net("s = Shape <start = 0, end = 1> (p)\n f = Cast <to = 1> (s)\n y = Mul (p, f)", batch="N", opset=15,
            consumer="3x3"),
    ),
    Case(
        "shape_of_spatial_negative_start_15",
        net("s = Shape <start = -2> (p)\n f = Cast <to = 1> (s)\n r = ReduceSum <keepdims = 0> (f)\n y = Mul (p, r)",
            batch="N", opset=15, consumer="3x3"),
    ),
    # Gather: along a spatial axis channels pass through; along the channel axis it blocks
    Case("gather_spatial", net("y = Gather <axis = 2> (p, idx)", "int64[3] idx = {0, 2, 4}", consumer="3x3")),
    Case(
        "gather_spatial_scalar_index",  # the axis disappears: [B, 8, 6]
        net("g = Gather <axis = 3> (p, idx)\n y = Unsqueeze (g, ax)", "int64 idx = {1}, int64[1] ax = {3}"),
    ),
    Case(
        "gather_spatial_runtime_indices",
        net("y = Gather <axis = 3> (p, idx)", inputs="int64[4] idx", consumer="3x3"),
    ),
    Case(
        "gather_batch_axis_0",
        net("y = Gather (p, idx)", "int64[2] idx = {1, 0}", consumer="3x3"),
    ),
    Case(
        "gather_channel_blocks",
        net("y = Gather <axis = 1> (p, idx)", "int64[3] idx = {0, 2, 4}", yc=3),
        "block:Gather indexes it",
    ),
    # Einsum with a weight is a linear layer (rules/attention.py); a weight indexed by the
    # channel letter of both its input and its output is a per-channel scale (a member)
    Case(
        "einsum_per_channel_scale",
        net('y = Einsum <equation = "nchw,c->nchw"> (p, k)', "float[8] k", opset=12),
    ),
    Case(
        "einsum_per_channel_spatial_scale",
        net('y = Einsum <equation = "nchw,ch->nchw"> (p, k)', "float[8, 6] k", opset=12),
    ),
    # ops without a rule block, whatever they are
    Case(
        "lpnormalization_has_no_rule",
        net("y = LpNormalization <axis = 1> (p)"),
        "block:no rule for ai.onnx::LpNormalization",
    ),
    Case(
        "custom_op_has_no_rule",
        net("y = com.example.Foo (p)", domains=', "com.example" : 1'),
        "block:no rule for com.example::Foo",
        oracle=False,  # onnxruntime cannot run a made-up op
    ),
    Case(
        "custom_domain_relu_has_no_rule",  # the same name in another domain is another op
        net("y = com.example.Relu (p)", domains=', "com.example" : 1'),
        "block:no rule for com.example::Relu",
        oracle=False,
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


def test_constant_value_floats_member():
    """A per-channel constant given as ``value_floats`` (channels-last Mul): prune slices it;
    the oracle's zeroed copy zeroes it in place."""
    check(
        Case(
            "constant_value_floats",
            net(
                "k = Constant <value_floats = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]> ()\n"
                " t = Transpose <perm = [0, 2, 3, 1]> (p)\n m = Mul (t, k)\n"
                " y = Transpose <perm = [0, 3, 1, 2]> (m)",
                consumer="3x3",
            ),
        )
    )
