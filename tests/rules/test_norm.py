"""spa_nm/rules/norm.py: per-channel norms (BatchNorm, InstanceNorm) pass channels through with
their parameters as member slices; norms whose statistics span the channel axis block it."""

from __future__ import annotations

from tests.rules._harness import Case, check, net, variants

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
    # GroupNorm mixes the channels of a group: blocked (opset 18's per-group scale is
    # deprecated and fails the checker; 21 has a per-channel scale)
    *[
        Case(
            f"groupnorm_{g}_blocks",
            net(f"y = GroupNormalization <num_groups = {g}> (p, s, t)", "float[8] s, float[8] t", opset=21),
            "block:GroupNormalization",
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
