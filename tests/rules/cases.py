"""One table of small graphs per op: ``producer Conv -> BODY -> GAP -> Flatten -> Gemm``.

``BODY`` reads ``c1`` ([1, 8, 6, 6], a prunable channel space) and writes ``y``. Each case
expects either ``prune`` (channels removed, zero-group oracle exact) or ``block:<reason>``.
Extra declarations (weights, constants) go in ``decl``. The registry meta-test requires every
registered op to appear in some case's body.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    body: str
    expect: str = "prune"
    opset: int = 13
    decl: str = ""
    y_channels: int = 8
    batch: str = "1"
    domains: str = ""  # more opset imports: ', "com.microsoft" : 1'
    oracle: bool = True  # False: onnxruntime has no CPU kernel (checked in the op's own tests)


# small integer weights for the quantized-op cases
_Q64 = ", ".join(str((7 * i) % 11 - 5) for i in range(64))
_U64 = ", ".join(str(120 + (5 * i) % 17) for i in range(64))

C = [
    # -- unary element-wise ----------------------------------------------------------------
    *[
        Case(op.lower(), f"y = {op} (c1)")
        for op in (
            "Relu",
            "Sigmoid",
            "Tanh",
            "Softplus",
            "Softsign",
            "Erf",
            "Exp",
            "Neg",
            "Abs",
            "Sign",
            "Floor",
            "Ceil",
            "Sin",
            "Cos",
            "Identity",
            "Elu",
            "Selu",
            "LeakyRelu",
            "HardSigmoid",
        )
    ],  # fmt: skip
    Case("round", "y = Round (c1)", opset=11),
    Case("celu", "y = Celu (c1)", opset=12),
    Case("thresholded_relu", "y = ThresholdedRelu <alpha = 0.5> (c1)"),
    Case("hardswish", "y = HardSwish (c1)", opset=14),
    Case("mish", "y = Mish (c1)", opset=18),
    Case("gelu", "y = Gelu (c1)", opset=20),
    Case("sqrt_of_relu", "r = Relu (c1)\n y = Sqrt (r)"),
    Case("log_blocks", "r = Abs (c1)\n y = Log (r)", "block:not a known constant"),
    Case("reciprocal_blocks", "y = Reciprocal (c1)", "block:not a known constant"),
    Case("dropout", "y = Dropout (c1)"),
    Case(
        "dropout_mask_used",
        "y, m = Dropout (c1)\n mf = Cast <to = 1> (m)\n y2 = Add (y, mf)",
        "block:mask",
    ),
    Case("cast", "y = Cast <to = 1> (c1)"),
    Case("clip_attr", "y = Clip <min = 0.0, max = 6.0> (c1)", opset=10),
    Case(
        "clip_inputs", "y = Clip (c1, lo, hi)", opset=13, decl="float lo = {0.0}, float hi = {6.0}"
    ),
    # -- binary / broadcasting ------------------------------------------------------------
    Case(
        "add_residual",
        "d = Conv (c1, w2, b2)\n y = Add (d, c1)",
        decl="float[8, 8, 1, 1] w2, float[8] b2",
    ),
    Case("sub", "d = Conv (c1, w2)\n y = Sub (c1, d)", decl="float[8, 8, 1, 1] w2"),
    Case("mul_per_channel", "y = Mul (c1, k)", decl="float[8, 1, 1] k"),
    Case("add_per_channel", "y = Add (c1, k)", decl="float[8, 1, 1] k"),
    Case("div_per_channel", "y = Div (c1, var_k)", decl="float[8, 1, 1] var_k"),
    Case("div_scalar", "y = Div (c1, k)", decl="float k = {2.0}"),
    Case("max_min", "a = Max (c1, k)\n y = Min (a, k2)", decl="float k = {0.0}, float k2 = {3.0}"),
    Case("sum_mean", "a = Sum (c1, c1)\n y = Mean (a, c1)"),
    Case("pow_scalar", "y = Pow (c1, k)", decl="float k = {2.0}"),
    Case(
        "pow_per_channel_blocks",
        "y = Pow (c1, k)",
        "block:per-channel exponent",
        decl="float[8, 1, 1] k = {2, 2, 2, 2, 3, 3, 3, 3}",
    ),
    Case("prelu_per_channel", "y = PRelu (c1, s)", decl="float[8, 1, 1] s"),
    Case("prelu_scalar", "y = PRelu (c1, s)", decl="float[1] s"),
    Case(
        "se_gate",
        "g = GlobalAveragePool (c1)\n h = Conv (g, ws1, bs1)\n hr = Relu (h)\n "
        "e = Conv (hr, ws2, bs2)\n gate = HardSigmoid (e)\n y = Mul (c1, gate)",
        decl="float[2, 8, 1, 1] ws1, float[2] bs1, float[8, 2, 1, 1] ws2, float[8] bs2",
    ),
    Case(
        "add_spatial_map_blocks",
        "y = Add (c1, k)",
        "block:not a known constant",
        decl="float[1, 1, 6, 6] k",
    ),
    Case("where_mask", "z = Greater (c1, k)\n y = Where (z, c1, k)", decl="float k = {0.0}"),
    Case("comparisons", "a = Less (c1, k)\n b = LessOrEqual (c1, k)\n e = Equal (c1, k)\n g = GreaterOrEqual (c1, k)\n"
         " o = Or (a, b)\n n = Not (e)\n q = And (o, n)\n x = Xor (q, g)\n y = Where (x, c1, c1)", decl="float k = {0.5}"),
    Case("softmax_nan_guard", "s = Softmax <axis = 3> (c1)\n n = IsNaN (s)\n i = IsInf (s)\n o = Or (n, i)\n"
         " w = Where (o, k, s)\n y = Mul (c1, w)", decl="float k = {0.0}"),
    Case("expand_batch", "y = Expand (c1, sh)", decl="int64[4] sh = {1, 1, 6, 6}"),
    Case("expand_spatial", "g = GlobalAveragePool (c1)\n y = Expand (g, sh)", decl="int64[4] sh = {1, 8, 6, 6}"),
    # a fill sized at run time from the batch (an RNN's zero state): its channel entry is rewritten
    Case("constant_of_shape_runtime", "b = Shape <start = 0, end = 1> (c1)\n sh = Concat <axis = 0> (b, k)\n"
         " z = ConstantOfShape <value = float[1] {0.0}> (sh)\n y = Add (c1, z)", decl="int64[3] k = {8, 6, 6}", batch="N", opset=15),
    Case("constant_of_shape_static", "z = ConstantOfShape <value = float[1] {0.0}> (sh)\n y = Add (c1, z)",
         decl="int64[4] sh = {1, 8, 6, 6}"),
    Case("constant_of_shape_runtime_channels_block", "s = Shape (c1)\n z = ConstantOfShape <value = float[1] {0.0}> (s)\n"
         " y = Add (c1, z)", "block:Shape reads the channel count", batch="N"),
    Case("expand_creates_channels_blocks", "g = ReduceMean <axes = [1]> (c1)\n e = Expand (g, sh)\n y = Add (c1, e)",
         "block:Expand broadcasts it", decl="int64[4] sh = {1, 8, 6, 6}"),
    # -- onnxruntime contrib element-wise ops and norms (rules/contrib.py); a bias or a norm
    # runs over the last axis, so those cases see c1 channels-last. (BiasAdd has no CPU kernel:
    # its case skips the oracle, which tests/rules/test_contrib.py runs on it as two Adds.)
    *[
        Case(f"ms_{op.lower()}", f"y = com.microsoft.{op} {attrs}(c1)", domains=', "com.microsoft" : 1')
        for op, attrs in (("Gelu", ""), ("QuickGelu", "<alpha = 1.5> "), ("FastGelu", ""))
    ],
    *[
        Case(
            f"ms_{op.lower()}_channels_last",
            "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n"
            f" a = com.microsoft.{op} (t, bl)\n y = Transpose <perm = [0, 3, 1, 2]> (a)",
            decl="float[8] bl",
            domains=', "com.microsoft" : 1',
        )
        for op in ("FastGelu", "BiasGelu")
    ],
    Case("ms_biasadd_channels_last", "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n a = com.microsoft.BiasAdd (t, bl, t)\n"
         " y = Transpose <perm = [0, 3, 1, 2]> (a)", decl="float[8] bl", domains=', "com.microsoft" : 1', oracle=False),
    *[
        Case(  # the skip norms take [B, T, H] tokens: c1's 8 channels are the hidden axis of 36
            f"ms_{name}_channel_is_approximate",
            "r = Reshape (c1, s3)\n t = Transpose <perm = [0, 2, 1]> (r)\n"
            f" n = {norm}\n u = Transpose <perm = [0, 2, 1]> (n)\n y = Reshape (u, s4)",
            "block:allowed with --allow-approximate",
            decl="int64[3] s3 = {1, 8, 36}, int64[4] s4 = {1, 8, 6, 6}, float[8] g, float[8] be, float[8] bl",
            domains=', "com.microsoft" : 1',
        )
        for name, norm in (
            ("skiplayernorm", "com.microsoft.SkipLayerNormalization (t, t, g, be, bl)"),
            ("skipsimplifiedlayernorm", "com.microsoft.SkipSimplifiedLayerNormalization (t, t, g, bl)"),
            ("simplifiedlayernorm", "SimplifiedLayerNormalization (t, g)"),  # ONNX domain (onnxruntime's)
        )
    ],
    # -- conv family ----------------------------------------------------------------------
    Case(
        "conv_group1",
        "y = Conv <pads = [1, 1, 1, 1]> (c1, w2, b2)",
        decl="float[8, 8, 3, 3] w2, float[8] b2",
    ),
    Case("conv_no_bias", "y = Conv (c1, w2)", decl="float[8, 8, 1, 1] w2"),
    Case(
        "conv_grouped",
        "y = Conv <group = 2> (c1, w2, b2)",
        decl="float[8, 4, 1, 1] w2, float[8] b2",
    ),
    Case(
        "conv_depthwise",
        "y = Conv <group = 8, pads = [1, 1, 1, 1]> (c1, w2, b2)",
        decl="float[8, 1, 3, 3] w2, float[8] b2",
    ),
    Case(
        "conv_depthwise_mult2",
        "y = Conv <group = 8, pads = [1, 1, 1, 1]> (c1, w2)",
        decl="float[16, 1, 3, 3] w2",
        y_channels=16,
    ),
    Case(
        "convtranspose",
        "t = ConvTranspose <strides = [2, 2], kernel_shape = [2, 2]> (c1, wt, bt)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t)",
        decl="float[8, 8, 2, 2] wt, float[8] bt",
    ),
    Case(
        "convtranspose_depthwise",
        "t = ConvTranspose <group = 8, strides = [2, 2], kernel_shape = [2, 2]> (c1, wt)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t)",
        decl="float[8, 2, 2, 2] wt",
        y_channels=16,
    ),
    # -- BN trap (METHODS.md §1.4) --------------------------------------------------------
    Case(
        "bn_sigmoid_1x1_folds",
        "n = BatchNormalization (c1, s, t, m, var)\n a = Sigmoid (n)\n y = Conv (a, w2, b2)",
        decl="float[8] s, float[8] t, float[8] m, float[8] var, float[8, 8, 1, 1] w2, float[8] b2",
    ),
    Case(
        "bn_sigmoid_padded_blocks",
        "n = BatchNormalization (c1, s, t, m, var)\n a = Sigmoid (n)\n y = Conv <pads = [1, 1, 1, 1]> (a, w2, b2)",
        "block:cannot be folded",
        decl="float[8] s, float[8] t, float[8] m, float[8] var, float[8, 8, 3, 3] w2, float[8] b2",
    ),
    # -- norms ---------------------------------------------------------------------------
    Case(
        "batchnorm",
        "y = BatchNormalization (c1, s, t, m, var)",
        decl="float[8] s, float[8] t, float[8] m, float[8] var",
    ),
    Case("instancenorm", "y = InstanceNormalization (c1, s, t)", decl="float[8] s, float[8] t"),
    Case(
        "groupnorm",
        "y = GroupNormalization <num_groups = 2> (c1, s, t)",
        opset=21,
        decl="float[8] s, float[8] t",
    ),
    Case(
        "layernorm_channel_blocks",
        "p = Transpose <perm = [0, 2, 3, 1]> (c1)\n n = LayerNormalization (p, s, t)\n y = Transpose <perm = [0, 3, 1, 2]> (n)",
        "block:LayerNormalization",
        opset=17,
        decl="float[8] s, float[8] t",
    ),
    Case(
        "layernorm_spatial_blocks_constant",
        "y = LayerNormalization <axis = -1> (c1, s, t)",
        "block:not a known constant",
        opset=17,
        decl="float[6] s, float[6] t",
    ),
    Case(
        "layernorm_spatial_then_mul",
        "n = LayerNormalization <axis = -1> (c1, s, t)\n y = Mul (n, c1)",
        opset=17,
        decl="float[6] s, float[6] t",
    ),
    # -- shape ops -----------------------------------------------------------------------
    Case(
        "reshape_flatten_gemm",
        "f = Reshape (c1, sh)\n z = Gemm <transB = 1> (f, wg, bg)\n y = Reshape (z, sh2)",
        decl="int64[2] sh = {1, 288}, float[8, 288] wg, float[8] bg, int64[4] sh2 = {1, 8, 1, 1}",
    ),
    Case(
        "flatten_gemm",
        "f = Flatten (c1)\n z = Gemm (f, wg)\n y = Reshape (z, sh2)",
        decl="float[288, 8] wg, int64[4] sh2 = {1, 8, 1, 1}",
    ),
    Case(
        "shuffle",
        "r = Reshape (c1, s5)\n t = Transpose <perm = [0, 2, 1, 3, 4]> (r)\n y = Reshape (t, s4)",
        decl="int64[5] s5 = {1, 2, 4, 6, 6}, int64[4] s4 = {1, 8, 6, 6}",
    ),
    Case(
        "reshape_runtime_blocks",
        "s = Shape (input)\n c = Cast <to = 1> (s)\n f = Reshape (c1, s)\n y = Identity (c1)",
        "prune",
    ),
    Case(
        "transpose_roundtrip",
        "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n y = Transpose <perm = [0, 3, 1, 2]> (t)",
    ),
    Case(
        "squeeze_unsqueeze_11",
        "g = GlobalAveragePool (c1)\n s = Squeeze <axes = [2, 3]> (g)\n y = Unsqueeze <axes = [2, 3]> (s)",
        opset=11,
    ),
    Case(
        "squeeze_unsqueeze_13",
        "g = GlobalAveragePool (c1)\n s = Squeeze (g, ax)\n y = Unsqueeze (s, ax)",
        decl="int64[2] ax = {2, 3}",
    ),
    # no axes: every size-1 axis goes; surgery names them (a channel pruned to 1 stays)
    Case(
        "squeeze_no_axes",
        "g = GlobalAveragePool (c1)\n s = Squeeze (g)\n y = Unsqueeze (s, ax)",
        decl="int64[3] ax = {0, 2, 3}",
    ),
    Case(
        "squeeze_no_axes_11",
        "g = GlobalAveragePool (c1)\n s = Squeeze (g)\n y = Unsqueeze <axes = [0, 2, 3]> (s)",
        opset=11,
    ),
    # -- concat / split / slice ------------------------------------------------------------
    # one part (a cache Concat with no past, left by onnxruntime's optimizer): a copy
    Case("concat_single_input", "y = Concat <axis = 1> (c1)"),
    Case(
        "concat_channels",
        "d = Conv (c1, w2)\n y = Concat <axis = 1> (c1, d)",
        decl="float[4, 8, 1, 1] w2",
        y_channels=12,
    ),
    Case(
        "split_attr_11",
        "a, b = Split <axis = 1, split = [3, 5]> (c1)\n y = Concat <axis = 1> (b, a)",
        opset=11,
    ),
    Case(
        "split_input_13",
        "a, b = Split <axis = 1> (c1, sp)\n y = Concat <axis = 1> (b, a)",
        decl="int64[2] sp = {3, 5}",
    ),
    Case(
        "split_num_outputs_18",
        "a, b = Split <axis = 1, num_outputs = 2> (c1)\n y = Concat <axis = 1> (b, a)",
        opset=18,
    ),
    Case(
        "slice_inputs_13",
        "y = Slice (c1, st, en, ax)",
        decl="int64[1] st = {2}, int64[1] en = {7}, int64[1] ax = {1}",
        y_channels=5,
    ),
    Case(
        "slice_attrs_9",
        "y = Slice <starts = [2], ends = [7], axes = [1]> (c1)",
        opset=9,
        y_channels=5,
    ),
    Case(
        "slice_step_blocks",
        "y = Slice (c1, st, en, ax, sp)",
        "block:step",
        decl="int64[1] st = {0}, int64[1] en = {8}, int64[1] ax = {1}, int64[1] sp = {2}",
        y_channels=4,
    ),
    Case("gather_spatial", "y = Gather <axis = 2> (c1, idx)", decl="int64[3] idx = {0, 2, 4}"),
    Case(
        "gather_channel_blocks",
        "y = Gather <axis = 1> (c1, idx)",
        "block:Gather indexes it",
        decl="int64[3] idx = {0, 2, 4}",
        y_channels=3,
    ),
    # -- pooling, reductions, softmax, resize, pad -----------------------------------------
    Case("maxpool", "y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c1)"),
    Case("averagepool", "y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (c1)"),
    Case("lppool", "y = LpPool <kernel_shape = [2, 2]> (c1)"),
    Case("global_pools", "a = GlobalMaxPool (c1)\n b = GlobalLpPool (c1)\n y = Add (a, b)"),
    Case("reducemean_attr", "y = ReduceMean <axes = [2, 3]> (c1)"),
    Case("reducemean_input_18", "y = ReduceMean (c1, ax)", opset=18, decl="int64[2] ax = {2, 3}"),
    Case("reducesum_input_13", "y = ReduceSum (c1, ax)", decl="int64[2] ax = {2, 3}"),
    *[
        Case(op.lower(), f"y = {op} <axes = [2, 3]> (c1)")
        for op in (
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        )
    ],  # fmt: skip
    Case(
        "reducelogsum",
        "a = Abs (c1)\n y = ReduceLogSum <axes = [2, 3]> (a)",
        "block:not a known constant",
    ),
    Case(
        "reduce_channel_blocks",
        "r = ReduceMean <axes = [1], keepdims = 1> (c1)\n y = Add (c1, r)",
        "block:reduces it",
    ),
    Case("softmax_spatial_13", "y = Softmax <axis = 3> (c1)", "block:not a known constant"),
    Case("softmax_channel_blocks", "y = Softmax <axis = 1> (c1)", "block:normalizes over it"),
    Case(
        "logsoftmax_11_blocks",
        "y = LogSoftmax <axis = 1> (c1)",
        "block:normalizes over it",
        opset=11,
    ),
    Case("hardmax_spatial", "h = Hardmax <axis = 3> (c1)\n y = Mul (c1, h)"),
    Case(
        "resize_scales",
        'r = Resize <mode = "nearest"> (c1, roi, sc)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)',
        decl="float[0] roi = {}, float[4] sc = {1.0, 1.0, 2.0, 2.0}",
    ),
    Case(
        "resize_sizes",
        'r = Resize <mode = "nearest"> (c1, roi, , sz)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)',
        decl="float[0] roi = {}, int64[4] sz = {1, 8, 12, 12}",
    ),
    Case(
        "upsample_9",
        'r = Upsample <mode = "nearest"> (c1, sc)\n y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)',
        opset=9,
        decl="float[4] sc = {1.0, 1.0, 2.0, 2.0}",
    ),
    Case(
        "pad_spatial_13",
        "p = Pad (c1, pads)\n y = MaxPool <kernel_shape = [3, 3]> (p)",
        decl="int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1}",
    ),
    Case(
        "pad_attr_10",
        "p = Pad <pads = [0, 0, 1, 1, 0, 0, 1, 1]> (c1)\n y = MaxPool <kernel_shape = [3, 3]> (p)",
        opset=10,
    ),
    Case(
        "pad_channel_blocks",
        "p = Pad (c1, pads)\n y = Slice (p, st, en, ax)",
        "block:padded",
        decl="int64[8] pads = {0, 1, 0, 0, 0, 1, 0, 0}, int64[1] st = {1}, int64[1] en = {9}, int64[1] ax = {1}",
    ),
    # -- misc ----------------------------------------------------------------------------
    Case(
        "constant_param",
        "k = Constant <value = float[8, 1, 1] {1, 2, 3, 4, 5, 6, 7, 8}> ()\n y = Mul (c1, k)",
    ),
    # static shapes fold to constants (the zeroed original keeps reading the old size)
    Case(
        "shape_of_static_channel_folds",
        "s = Shape (c1)\n sf = Cast <to = 1> (s)\n r = ReduceSum <keepdims = 0> (sf)\n y = Mul (c1, r)",
    ),
    Case("size_static_folds", "s = Size (c1)\n sf = Cast <to = 1> (s)\n y = Mul (c1, sf)"),
    Case(
        "shape_of_channel_blocks",
        "s = Shape (c1)\n sf = Cast <to = 1> (s)\n r = ReduceSum <keepdims = 0> (sf)\n y = Mul (c1, r)",
        "block:reads the channel count",
        batch="N",
    ),
    Case(
        "size_blocks",
        "s = Size (c1)\n sf = Cast <to = 1> (s)\n y = Mul (c1, sf)",
        "block:reads the channel count",
        batch="N",
    ),
    Case(
        "matmul_const",
        "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n m = MatMul (t, wm)\n y = Transpose <perm = [0, 3, 1, 2]> (m)",
        decl="float[8, 8] wm",
    ),
    Case(
        "matmul_activations_blocks",
        "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n u = Transpose <perm = [0, 1, 3, 2]> (t)\n m = MatMul (u, t)\n"
        " r = ReduceMean <axes = [3], keepdims = 0> (m)\n rt = Transpose <perm = [0, 2, 1]> (r)\n r4 = Unsqueeze (rt, ax)\n y = Mul (c1, r4)",
        "block:ReduceMean reduces it",  # the Gram matrix's free axes couple; the mean over one blocks
        decl="int64[1] ax = {3}",
    ),
    Case(  # channels are a batch axis of p·pᵀ: each channel's product is independent
        "matmul_activations_batch",
        "t = Transpose <perm = [0, 1, 3, 2]> (c1)\n y = MatMul (c1, t)",
    ),
    Case("einsum_activations_batch", 'y = Einsum <equation = "bchw,bckw->bchk"> (c1, c1)'),
    Case(  # the channel letter is contracted: a removed channel drops its own term of the sum
        "einsum_contracted_channel",
        'g = Einsum <equation = "bchw,bchw->bhw"> (c1, c1)\n u = Unsqueeze (g, ax)\n y = Mul (c1, u)',
        decl="int64[1] ax = {1}",
    ),
    Case(
        "gemm_transa",
        "g = GlobalAveragePool (c1)\n f = Flatten (g)\n ft = Transpose (f)\n z = Gemm <transA = 1> (ft, wg, bg)\n y = Reshape (z, sh)",
        decl="float[8, 8] wg, float[8] bg, int64[4] sh = {1, 8, 1, 1}",
    ),
    # recurrent ops (tests/rules/test_recurrent.py has the variants): the 36 spatial positions
    # are the sequence, c1's channels the input features, read through W's columns
    *[
        Case(
            f"{op.lower()}_input_features",
            "s = Reshape (c1, sh)\n t = Transpose <perm = [2, 0, 1]> (s)\n"
            f" r, rh = {op} <hidden_size = 8> (t, w, rr, bb)\n"
            " q = Reshape (r, sq)\n y = Transpose <perm = [2, 3, 0, 1]> (q)",
            decl=f"int64[3] sh = {{1, 8, 36}}, float[1, {8 * g}, 8] w, float[1, {8 * g}, 8] rr, "
            f"float[1, {16 * g}] bb, int64[4] sq = {{6, 6, 1, 8}}",
        )
        for op, g in (("LSTM", 4), ("GRU", 3), ("RNN", 1))
    ],
    # quantization (tests/rules/test_quant.py has the QDQ weight and zoo cases)
    Case(
        "qdq_pair",
        "q = QuantizeLinear (c1, s1, z1)\n y = DequantizeLinear (q, s1, z1)",
        decl="float s1 = {0.05}, uint8 z1 = {128}",
    ),
    *[
        Case(
            f"{cid}_blocks",
            body,
            "block:computes on quantized tensors",
            decl="float s1 = {0.05}, uint8 z1 = {128}, int8 kz = {0}, "
            f"int8[8, 8{dims}] kq = {{{_Q64}}}, uint8[8, 8{dims}] ku = {{{_U64}}}",
        )
        for cid, dims, body in [
            ("qlinearconv", ", 1, 1", "q = QuantizeLinear (c1, s1, z1)\n"
             " k = QLinearConv (q, s1, z1, kq, s1, kz, s1, z1)\n y = DequantizeLinear (k, s1, z1)"),
            ("convinteger", ", 1, 1", "q = QuantizeLinear (c1, s1, z1)\n k = ConvInteger (q, ku, z1)\n"
             " y = Cast <to = 1> (k)"),
            ("matmulinteger", "", "q = QuantizeLinear (c1, s1, z1)\n t = Transpose <perm = [0, 2, 3, 1]> (q)\n"
             " k = MatMulInteger (t, ku, z1)\n f = Cast <to = 1> (k)\n y = Transpose <perm = [0, 3, 1, 2]> (f)"),
            ("qlinearmatmul", "", "q = QuantizeLinear (c1, s1, z1)\n t = Transpose <perm = [0, 2, 3, 1]> (q)\n"
             " k = QLinearMatMul (t, s1, z1, kq, s1, kz, s1, z1)\n f = DequantizeLinear (k, s1, z1)\n"
             " y = Transpose <perm = [0, 3, 1, 2]> (f)"),
            ("dynamicquantizelinear", "", "q, qs, qz = DynamicQuantizeLinear (c1)\n"
             " y = DequantizeLinear (q, qs, qz)"),
        ]
    ],  # fmt: skip
    # attention (tests/rules/test_attention.py has the variants): c1's 8 channels are the
    # hidden axis of 36 tokens, 4 heads of 2
    Case(
        "attention_op_3d_heads",
        "r = Reshape (c1, s3)\n t = Transpose <perm = [0, 2, 1]> (r)\n"
        " a = Attention <q_num_heads = 4, kv_num_heads = 4> (t, t, t)\n"
        " u = Transpose <perm = [0, 2, 1]> (a)\n y = Reshape (u, s4)",
        opset=23,
        decl="int64[3] s3 = {1, 8, 36}, int64[4] s4 = {1, 8, 6, 6}",
    ),
    Case(
        "rmsnorm_channel_is_approximate",
        "t = Transpose <perm = [0, 2, 3, 1]> (c1)\n n = RMSNormalization (t, s)\n"
        " y = Transpose <perm = [0, 3, 1, 2]> (n)",
        "block:allowed with --allow-approximate",
        opset=23,
        decl="float[8] s",
    ),
    # onnxruntime's contrib attention (tests/rules/test_attention.py has the structural checks)
    Case(
        "ms_multiheadattention_self",
        "r = Reshape (c1, s3)\n t = Transpose <perm = [0, 2, 1]> (r)\n"
        " a = com.microsoft.MultiHeadAttention <num_heads = 4> (t, t, t)\n"
        " u = Transpose <perm = [0, 2, 1]> (a)\n y = Reshape (u, s4)",
        decl="int64[3] s3 = {1, 8, 36}, int64[4] s4 = {1, 8, 6, 6}",
        domains=', "com.microsoft" : 1',
    ),
    Case(
        "ms_attention_fused",
        "r = Reshape (c1, s3)\n t = Transpose <perm = [0, 2, 1]> (r)\n"
        " a = com.microsoft.Attention <num_heads = 4> (t, wqkv, bqkv)\n"
        " u = Transpose <perm = [0, 2, 1]> (a)\n y = Reshape (u, s4)",
        decl="int64[3] s3 = {1, 8, 36}, int64[4] s4 = {1, 8, 6, 6}, float[8, 24] wqkv, float[24] bqkv",
        domains=', "com.microsoft" : 1',
    ),
    Case(
        "ms_groupqueryattention",
        "r = Reshape (c1, s3)\n t = Transpose <perm = [0, 2, 1]> (r)\n q = MatMul (t, wq)\n kv = MatMul (t, wk)\n"
        " a, pk, pv = com.microsoft.GroupQueryAttention <num_heads = 4, kv_num_heads = 2> (q, kv, kv, , , sl, tl)\n"
        " o = MatMul (a, wo)\n u = Transpose <perm = [0, 2, 1]> (o)\n y = Reshape (u, s4)",
        decl="int64[3] s3 = {1, 8, 36}, int64[4] s4 = {1, 8, 6, 6}, float[8, 32] wq, float[8, 16] wk, "
        "float[32, 8] wo, int32[1] sl = {35}, int32 tl = {36}",
        domains=', "com.microsoft" : 1',
    ),
    Case("unknown_op_blocks", "y = LpNormalization <axis = 1> (c1)", "block:no rule"),
    Case("lrn_channel_is_approximate", "y = LRN <size = 3> (c1)", "block:allowed with --allow-approximate"),
    Case(
        "shared_initializer_elsewhere_blocks",
        "y = Mul (c1, k)\n z = Add (k, k)",
        "prune",
        decl="float[8, 1, 1] k",
    ),
    # -- indexing and selection -----------------------------------------------------------
    Case("topk", "v, i = TopK <axis = 3> (c1, k)\n y = Identity (v)", decl="int64[1] k = {3}"),
    Case(
        "topk_channel_blocks",
        "v, i = TopK <axis = 1> (c1, k)\n y = Identity (v)",
        "block:TopK selects along channel axis",
        decl="int64[1] k = {3}",
        y_channels=3,
    ),
    Case("argmax", "a = ArgMax <axis = 3> (c1)\n y = Cast <to = 1> (a)"),
    Case(
        "argmin_last_index",
        "a = ArgMin <axis = 2, keepdims = 0, select_last_index = 1> (c1)\n u = Unsqueeze (a, ax)\n"
        " y = Cast <to = 1> (u)",
        decl="int64[1] ax = {2}",
    ),
    Case(
        "argmax_channel_blocks",
        "a = ArgMax <axis = 1> (c1)\n y = Cast <to = 1> (a)",
        "block:ArgMax selects along channel axis",
        y_channels=1,
    ),
    Case("gathernd", "y = GatherND (c1, ind)", decl="int64[1, 1] ind = {0}"),
    Case(
        "gathernd_channel_blocks",
        "y = GatherND <batch_dims = 1> (c1, ind)",
        "block:GatherND indexes a channel axis",
        decl="int64[1, 1, 1] ind = {2}",
        y_channels=1,
    ),
    Case(
        "scatterelements",
        "u = ReduceMax <axes = [3]> (c1)\n y = ScatterElements <axis = 3> (c1, ind, u)",
        decl="int64[1, 8, 6, 1] ind = {" + ", ".join(str(i % 6) for i in range(48)) + "}",
    ),
    Case(
        "scatternd",
        "u = Relu (c1)\n y = ScatterND (c1, ind, u)",
        decl="int64[1, 1] ind = {0}",
    ),
    Case(
        "nonzero_blocks",
        "n = NonZero (c1)\n f = Cast <to = 1> (n)\n r = ReduceSum <keepdims = 0> (f)\n y = Add (c1, r)",
        "block:NonZero",
    ),
    Case(
        "range_positions",
        "r = Range (z, l, o)\n f = Cast <to = 1> (r)\n y = Mul (c1, f)",
        decl="int64 z = {0}, int64 l = {6}, int64 o = {1}",
    ),

]

CASES = {c.id: c for c in C}
assert len(CASES) == len(C), "duplicate case ids"


def model_text(c: Case) -> str:
    decl = (", " + c.decl) if c.decl else ""
    body = "\n  ".join(line.strip() for line in c.body.split("\n"))
    ir_version = 9 if c.opset <= 20 else 10 if c.opset <= 22 else 11
    return f"""
<ir_version: {ir_version}, opset_import: ["" : {c.opset}{c.domains}]>
case (float[{c.batch}, 3, 6, 6] input) => (float[{c.batch}, 5] output)
<float[8, 3, 3, 3] w1, float[8] b1, float[5, {c.y_channels}] wf, float[5] bf{decl}>
{{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
  {body}
  gp = GlobalAveragePool (y)
  fl = Flatten (gp)
  output = Gemm <transB = 1> (fl, wf, bf)
}}
"""
