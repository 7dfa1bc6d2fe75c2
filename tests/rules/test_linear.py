"""spa_nm/rules/linear.py: Gemm and MatMul with a constant weight cut channel spaces; Gemm folds
a carried constant into C; MatMul between two activations couples its axes (more cases in
test_attention.py)."""

from __future__ import annotations

from tests.rules._harness import Case, check, net, variants

FLAT = "g = GlobalAveragePool (p)\n f = Flatten (g)"  # p -> [B, 8]

CASES: list[Case] = []

# Gemm as the consumer of p's channels (through GAP -> Flatten), transB 0/1, C shapes
for trans_b in (0, 1):
    w = "float[4, 8] w" if trans_b else "float[8, 4] w"
    for cid, c_decl, args in (
        ("nobias", "", "f, w"),
        ("bias", ", float[4] c", "f, w, c"),
        ("bias_row", ", float[1, 4] c", "f, w, c"),
        ("bias_scalar", ", float[1] c", "f, w, c"),
    ):
        CASES.append(
            Case(
                f"gemm_consumer_transb{trans_b}_{cid}",
                net(f"{FLAT}\n out = Gemm <transB = {trans_b}> ({args})", w + c_decl,
                    consumer=None, out="float[2, 4]"),
            )
        )

# Gemm as producer: h = Gemm(f) -> Relu -> Gemm consumer; transA reads a transposed A
for trans_a in (0, 1):
    for trans_b in (0, 1):
        a = "ft" if trans_a else "f"
        pre = "\n ft = Transpose (f)" if trans_a else ""
        w = "float[6, 8] w1" if trans_b else "float[8, 6] w1"
        CASES.append(
            Case(
                f"gemm_producer_transa{trans_a}_transb{trans_b}",
                net(
                    f"{FLAT}{pre}\n h = Gemm <transA = {trans_a}, transB = {trans_b}> ({a}, w1, c1)\n"
                    " y = Relu (h)",
                    f"{w}, float[6] c1",
                    consumer="gemm",
                    yc=6,
                ),
                target="h",
                coupled=("y",),
                separate=("p",),
            )
        )

CASES += [
    # a removed channel carries Sigmoid(0) = 0.5 into the next Gemm: folded into C (created
    # when absent), with alpha and beta
    *[
        Case(
            f"gemm_folds_{cid}",
            net(
                f"{FLAT}\n h = Gemm <transB = 1> (f, w1, c1)\n s = Sigmoid (h)\n"
                f" out = Gemm {attrs} ({args})",
                f"float[6, 8] w1, float[6] c1, {decl}",
                consumer=None,
                out="float[2, 4]",
            ),
            target="h",
        )
        for cid, attrs, args, decl in (
            ("bias", "<transB = 1>", "s, w2, c2", "float[4, 6] w2, float[4] c2"),
            ("new_bias", "", "s, w2", "float[6, 4] w2"),
            ("alpha_beta", "<alpha = 0.5, beta = 2.0>", "s, w2, c2", "float[6, 4] w2, float[4] c2"),
        )
    ],
    Case(
        "gemm_fold_beta0_blocks",  # C is multiplied by 0: a folded constant cannot live there
        net(
            f"{FLAT}\n h = Gemm <transB = 1> (f, w1, c1)\n s = Sigmoid (h)\n"
            " out = Gemm <beta = 0.0> (s, w2, c2)",
            "float[6, 8] w1, float[6] c1, float[6, 4] w2, float[4] c2",
            consumer=None,
            out="float[2, 4]",
        ),
        "block:cannot be folded",
        target="h",
    ),
    Case(
        "gemm_broadcast_c_producer_blocks",  # a removed output is beta·C, not a known constant
        net(
            f"{FLAT}\n h = Gemm <transB = 1> (f, w1, c1)\n y = Identity (h)",
            "float[6, 8] w1, float[1] c1",
            consumer="gemm",
            yc=6,
        ),
        "block:not a known constant",
        target="h",
    ),
    Case(
        "gemm_weight_is_input_blocks",
        net(f"{FLAT}\n y = Gemm (f, w)", consumer="gemm", yc=6, inputs="float[8, 6] w"),
        "block:Gemm B is not a constant",
    ),
    # MatMul with a constant [K, N] weight on channels-last activations
    Case(
        "matmul_channels_last_in",
        net(
            "a = Transpose <perm = [0, 2, 3, 1]> (p)\n m = MatMul (a, wm)\n"
            " y = Transpose <perm = [0, 3, 1, 2]> (m)",
            "float[8, 6] wm",
            yc=6,
        ),
        separate=("m",),
    ),
    Case(
        "matmul_channels_last_out",
        net(
            "a = Transpose <perm = [0, 2, 3, 1]> (p)\n m = MatMul (a, wm)\n"
            " y = Transpose <perm = [0, 3, 1, 2]> (m)",
            "float[8, 6] wm",
            yc=6,
        ),
        target="m",
        coupled=("y",),
    ),
    Case(
        "matmul_flattened",
        net("f = Flatten (p)\n out = MatMul (f, wm)", "float[288, 4] wm", consumer=None, out="float[2, 4]"),
    ),
    Case(
        "matmul_chain",
        net(
            f"{FLAT}\n h = MatMul (f, w1)\n r = Relu (h)\n out = MatMul (r, w2)",
            "float[8, 6] w1, float[6, 4] w2",
            consumer=None,
            out="float[2, 4]",
        ),
        target="h",
        coupled=("r",),
    ),
    Case(
        "matmul_cannot_fold_blocks",  # MatMul has no bias to fold a constant into
        net(
            f"{FLAT}\n s = Sigmoid (f)\n out = MatMul (s, w1)",
            "float[8, 4] w1",
            consumer=None,
            out="float[2, 4]",
        ),
        "block:cannot be folded",
    ),
    Case(
        "matmul_two_activations_batch",  # p @ p^T per (sample, channel): channels are a batch axis
        net("t = Transpose <perm = [0, 1, 3, 2]> (p)\n y = MatMul (p, t)", consumer="3x3"),
    ),
    Case(
        "matmul_batched_weight_blocks",
        net(
            f"{FLAT}\n u = Unsqueeze (f, ax)\n out = MatMul (u, w3)",
            "int64[1] ax = {0}, float[3, 8, 4] w3",
            consumer=None,
            out="float[3, 2, 4]",
        ),
        "block:not a 2-D matrix",
    ),
]


@variants(CASES)
def test_case(case):
    check(case)
