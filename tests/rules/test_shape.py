"""spa_nm/rules/shape.py: Reshape, Flatten, Squeeze, Unsqueeze, Transpose and Expand carry
channel slots through the dim-group algebra and rewrite their shape constants."""

from __future__ import annotations

from tests.rules._harness import Case, check, net, shape_of, variants

GEMM_OUT = {"consumer": None, "out": "float[2, 4]"}


def _shuffle(groups: int) -> str:
    return (
        "r = Reshape (p, s5)\n t = Transpose <perm = [0, 2, 1, 3, 4]> (r)\n y = Reshape (t, s4)",
        f"int64[5] s5 = {{2, {groups}, {8 // groups}, 6, 6}}, int64[4] s4 = {{2, 8, 6, 6}}",
    )


CASES: list[Case] = [
    # Reshape [B, C, H, W] -> [B, C*H*W] -> Gemm: each channel owns a block of columns
    *[
        Case(
            f"reshape_gemm_transb{tb}_{tag}",
            net(
                f"f = Reshape (p, sh)\n out = Gemm <transB = {tb}> (f, w, c)",
                f"int64[2] sh = {{{target}}}, float[{'4, 288' if tb else '288, 4'}] w, float[4] c",
                **GEMM_OUT,
            ),
        )
        for tb in (0, 1)
        for tag, target in (("static", "2, 288"), ("zero_minus1", "0, -1"))
    ],
    Case(
        "reshape_allowzero_14",
        net(
            "f = Reshape <allowzero = 1> (p, sh)\n out = Gemm (f, w)",
            "int64[2] sh = {2, 288}, float[288, 4] w",
            opset=14,
            **GEMM_OUT,
        ),
    ),
    Case(
        "reshape_with_constant_node_shape",
        net(
            "sh = Constant <value = int64[2] {2, -1}> ()\n f = Reshape (p, sh)\n out = MatMul (f, w)",
            "float[288, 4] w",
            **GEMM_OUT,
        ),
    ),
    # channel shuffle: [B, g, C/g, H, W] -> swap -> [B, C, H, W]
    *[
        Case(f"channel_shuffle_g{g}", net(*_shuffle(g), consumer="3x3"), coupled=("r", "t", "y"))
        for g in (2, 4)
    ],
    Case(
        "reshape_split_and_merge",  # [B, 8, 36] <-> [B, 2, 4, 36] without a transpose
        net(
            "r = Reshape (p, s4)\n y = Reshape (r, s)",
            "int64[4] s4 = {2, 2, 4, 36}, int64[4] s = {2, 8, 6, 6}",
        ),
        coupled=("r",),
    ),
    Case(
        "reshape_merge_spatial_with_zero",  # {0, 8, 36} and back {0, 8, 6, 6}: channel entries rewritten
        net(
            "r = Reshape (p, s3)\n y = Reshape (r, s4)",
            "int64[3] s3 = {0, 8, 36}, int64[4] s4 = {0, 8, 6, 6}",
            consumer="3x3",
        ),
        coupled=("r",),
    ),
    Case(
        "reshape_minus1_on_channels",
        net(
            "r = Reshape (p, s3)\n y = Reshape (r, s4)",
            "int64[3] s3 = {2, -1, 36}, int64[4] s4 = {2, -1, 6, 6}",
        ),
        coupled=("r",),
    ),
    Case(
        "unsqueeze_squeeze_before_channels_13",  # [B, 1, C, H, W] and back
        net("u = Unsqueeze (p, ax)\n y = Squeeze (u, ax)", "int64[1] ax = {1}", consumer="3x3"),
    ),
    Case(
        "flatten_conv1d",
        net(
            "f = Flatten (p)\n out = Gemm <transB = 1> (f, w)",
            "float[4, 48] w",
            rank=3,
            consumer=None,
            out="float[2, 4]",
        ),
    ),
    Case(  # Concat(Shape(p)[:1], 288) is refined to the constant [0, 288], then fixed up
        "reshape_runtime_batch_shape",
        net(
            "n = Shape <start = 0, end = 1> (p)\n sh = Concat <axis = 0> (n, k)\n"
            " f = Reshape (p, sh)\n out = Gemm (f, w)",
            "int64[1] k = {288}, float[288, 4] w",
            opset=15,
            batch="N",
            consumer=None,
            out="float[N, 4]",
        ),
    ),
    Case(  # the target comes from a graph input: nothing is known about it
        "reshape_runtime_shape_blocks",
        net(
            "f = Reshape (p, sh)\n out = Gemm (f, w)",
            "float[288, 4] w",
            opset=15,
            consumer=None,
            out="float[2, 4]",
            inputs="int64[2] sh",
        ),
        "block:computed at run time",
        oracle=False,
    ),
    Case(
        "reshape_opset4_has_no_rule",  # the target was an attribute before opset 5
        net(
            "f = Reshape <shape = [2, 288]> (p)\n out = MatMul (f, w)",
            "float[288, 4] w",
            opset=4,
            **GEMM_OUT,
        ),
        "block:no rule for ai.onnx::Reshape at opset 4",
    ),
    # Flatten
    *[
        Case(
            f"flatten_gemm_{tag}",
            net(
                f"f = Flatten {attrs} (p)\n out = Gemm (f, w)",
                f"float[{k}, 4] w",
                consumer=None,
                out=f"float[{rows}, 4]",
            ),
        )
        for tag, attrs, k, rows in (("axis1", "", 288, 2), ("axis0", "<axis = 0>", 576, 1))
    ],
    Case(
        "flatten_gap_gemm",
        net("g = GlobalAveragePool (p)\n y = Flatten (g)", consumer="gemm"),
    ),
    Case(
        "flatten_axis2_blocks",  # channels merge into the rows of the Gemm, not its columns
        net(
            "f = Flatten <axis = 2> (p)\n out = Gemm (f, w)",
            "float[36, 4] w",
            consumer=None,
            out="float[16, 4]",
        ),
        "block:Gemm does not carry channel slot",
    ),
    # Squeeze / Unsqueeze: axes attribute before opset 13, input from 13
    Case(
        "squeeze_unsqueeze_11",
        net(
            "g = GlobalAveragePool (p)\n s = Squeeze <axes = [2, 3]> (g)\n y = Unsqueeze <axes = [2, 3]> (s)",
            opset=11,
        ),
        coupled=("s",),
    ),
    Case(
        "squeeze_unsqueeze_13",
        net(
            "g = GlobalAveragePool (p)\n s = Squeeze (g, ax)\n y = Unsqueeze (s, ax)",
            "int64[2] ax = {2, 3}",
        ),
        coupled=("s",),
    ),
    Case(
        "squeeze_unsqueeze_negative_axes_13",
        net(
            "g = GlobalAveragePool (p)\n s = Squeeze (g, ax)\n y = Unsqueeze (s, ax)",
            "int64[2] ax = {-2, -1}",
        ),
    ),
    Case(
        "squeeze_gemm_11",
        net(
            "g = GlobalAveragePool (p)\n y = Squeeze <axes = [3, 2]> (g)", opset=11, consumer="gemm"
        ),
    ),
    # without axes every size-1 axis goes: surgery names them, so a channel pruned to one
    # stays (batch 2: the batch axis is not squeezed)
    Case(
        "squeeze_without_axes",
        net("g = GlobalAveragePool (p)\n y = Squeeze (g)", consumer="gemm"),
    ),
    Case(
        "squeeze_without_axes_11",
        net("g = GlobalAveragePool (p)\n y = Squeeze (g)", opset=11, consumer="gemm"),
    ),
    Case(
        "squeeze_without_axes_symbolic_blocks",
        net("g = GlobalAveragePool (p)\n y = Squeeze (g)", consumer="gemm", batch="N"),
        "block:Squeeze without axes on a shape with unknown dims",
    ),
    # Transpose
    Case(
        "transpose_roundtrip",
        net(
            "t = Transpose <perm = [0, 2, 3, 1]> (p)\n y = Transpose <perm = [0, 3, 1, 2]> (t)",
            consumer="3x3",
        ),
        coupled=("t",),
    ),
    Case(
        "transpose_default_perm",  # no perm: reverse the axes, twice
        net("t = Transpose (p)\n y = Transpose (t)"),
        coupled=("t",),
    ),
    Case(
        "transpose_spatial_only",
        net("y = Transpose <perm = [0, 1, 3, 2]> (p)", consumer="3x3"),
    ),
    # Expand
    Case("expand_noop", net("y = Expand (p, sh)", "int64[4] sh = {1, 1, 6, 6}", consumer="3x3")),
    Case(
        "expand_spatial",
        net(
            "g = GlobalAveragePool (p)\n y = Expand (g, sh)",
            "int64[4] sh = {2, 8, 6, 6}",
            consumer="3x3",
        ),
    ),
    Case(
        "expand_short_shape",
        net(
            "g = GlobalAveragePool (p)\n y = Expand (g, sh)", "int64[2] sh = {6, 6}", consumer="3x3"
        ),
    ),
    Case(
        "expand_creates_channels_blocks",
        net(
            "g = ReduceMean <axes = [1]> (p)\n e = Expand (g, sh)\n y = Add (p, e)",
            "int64[4] sh = {2, 8, 6, 6}",
        ),
        "block:Expand broadcasts it",
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


def test_reshape_target_is_rewritten():
    """The Reshape [2, 288] target becomes [2, kept * 36]; a 0/-1 target is left alone."""
    for cid, want in (
        ("reshape_gemm_transb0_static", None),
        ("reshape_gemm_transb0_zero_minus1", [0, -1]),
    ):
        (case,) = [c for c in CASES if c.id == cid]
        res = check(case)
        (node,) = [n for n in res.model.graph if n.op_type == "Reshape"]
        target = list(node.inputs[1].const_value.numpy())
        kept = res.model.graph.initializers["wp"].const_value.shape[0]
        assert target == (want or [2, kept * 36])


# -- symbolic batch and sequence: run-time targets, merged symbolic axes ---------------------

# p [N, 8, 6, 6] as N x 36 tokens of 8 channels, the token axis symbolic in the middle
_TOKENS = "r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n"
_TOKENS_DECL = "int64[3] s3 = {0, 8, 36}"
_BACK = "\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)"
_BACK_DECL = "int64[4] s4 = {0, 8, 6, 6}"


def test_runtime_concat_target_is_rewritten():
    """[N*36, 8] back to [N, 36, 2, 4] with Concat(Shape(tok)[:2], [2, 4]): the symbols do not
    fold (N*36 is a new symbol), so the constant part of the Concat is rewritten."""
    body = (
        f"{_TOKENS} f = Reshape (tok, m2)\n g = Gemm (f, wg, bg)\n sh = Shape (tok)\n"
        " lead = Slice (sh, z0, two)\n tgt = Concat <axis = 0> (lead, hd)\n qh = Reshape (g, tgt)\n"
        f" qr = Relu (qh)\n qm = Reshape (qr, s3m)\n z = MatMul (qm, wo){_BACK}"
    )
    decl = (
        f"{_TOKENS_DECL}, int64[2] m2 = {{-1, 8}}, float[8, 8] wg, float[8] bg, int64[1] z0 = {{0}}, "
        f"int64[1] two = {{2}}, int64[2] hd = {{2, 4}}, int64[3] s3m = {{0, 0, 8}}, float[8, 8] wo, {_BACK_DECL}"
    )
    res = check(Case("rt", net(body, decl, batch="N"), target="g"))
    assert shape_of(res.model, "qh")[2:] == (2, 2)  # the inner factor shrank (no heads here)
    (cat,) = [n for n in res.model.graph if n.op_type == "Concat"]
    assert cat.inputs[1].const_value.numpy().tolist() == [2, 2]


def test_runtime_shape_of_channels_folds_and_is_rewritten():
    """Concat(Shape(q), [1]) with a symbolic batch: the pre-pass folds the static entries into
    a constant target with 0 for the batch, which the Reshape fixup rewrites."""
    body = (
        f"{_TOKENS} q = MatMul (tok, wq)\n sh = Shape (q)\n tgt = Concat <axis = 0> (sh, one)\n"
        f" qh = Reshape (q, tgt)\n qm = Reshape (qh, s3m)\n z = MatMul (qm, wo){_BACK}"
    )
    decl = (
        f"{_TOKENS_DECL}, float[8, 8] wq, int64[1] one = {{1}}, int64[3] s3m = {{0, 0, 8}}, "
        f"float[8, 8] wo, {_BACK_DECL}"
    )
    res = check(Case("rtb", net(body, decl, batch="N"), target="q"))
    assert shape_of(res.model, "qh")[2:] == (4, 1)


def test_merged_symbolic_tokens_keep_channels():
    """[N, 36, 8] -> [-1, 8] (N*36 symbolic) -> Gemm -> back: the merged axis holds no channel."""
    body = (
        f"{_TOKENS} f = Reshape (tok, m2)\n g = Gemm (f, wg, bg)\n sh = Shape (tok)\n"
        " lead = Slice (sh, z0, two)\n tgt = Concat <axis = 0> (lead, c8)\n z = Reshape (g, tgt)"
        f"{_BACK}"
    )
    decl = (
        f"{_TOKENS_DECL}, int64[2] m2 = {{-1, 8}}, float[8, 8] wg, float[8] bg, int64[1] z0 = {{0}}, "
        f"int64[1] two = {{2}}, int64[1] c8 = {{8}}, {_BACK_DECL}"
    )
    res = check(Case("merged", net(body, decl, batch="N"), target="p", coupled=("f",)))
    assert shape_of(res.model, "f")[1] == 4  # p's channels, through the merged token axis
    assert shape_of(res.model, "g")[1] == 4  # the Gemm's own group, back through a run-time target


def test_batched_transpose_through_a_merged_axis_is_unmerged():
    """Reshape [N, 2, 36, 4] -> [-1, 36, 4], Transpose, Reshape back (the dynamo exporter's
    batched transpose) is one Transpose after the pre-pass, so the heads axis stays visible."""
    body = (
        f"{_TOKENS} q = MatMul (tok, wq)\n qh = Reshape (q, s4h)\n qt = Transpose <perm = [0, 2, 1, 3]> (qh)\n"
        " m = Reshape (qt, s3k)\n mt = Transpose <perm = [0, 2, 1]> (m)\n sh = Shape (qt)\n"
        " lead = Slice (sh, z0, two)\n tgt = Concat <axis = 0> (lead, tail)\n kt = Reshape (mt, tgt)\n"
        " s = MatMul (qt, kt)\n a = Softmax <axis = -1> (s)\n o = MatMul (a, qt)\n"
        f" ot = Transpose <perm = [0, 2, 1, 3]> (o)\n om = Reshape (ot, s3m)\n z = MatMul (om, wo){_BACK}"
    )
    decl = (
        f"{_TOKENS_DECL}, float[8, 8] wq, int64[4] s4h = {{0, 0, 2, 4}}, int64[3] s3k = {{-1, 36, 4}}, "
        "int64[1] z0 = {0}, int64[1] two = {2}, int64[2] tail = {4, 36}, int64[3] s3m = {0, 0, 8}, "
        f"float[8, 8] wo, {_BACK_DECL}"
    )
    res = check(Case("unmerge", net(body, decl, batch="N"), target="q"))
    assert shape_of(res.model, "s")[1] == 1  # one of two heads
    assert not any(n.name == "Reshape" and n.outputs[0].name == "m" for n in res.model.graph)


def test_identity_reshape_keeps_a_head_split():
    """[2, 36, 2, 4] -> Reshape to the same shape: the (heads, head_dim) slot goes through whole
    (the legacy exporter writes such reshapes after attention·V)."""
    body = (
        f"{_TOKENS} q = MatMul (tok, wq)\n qh = Reshape (q, s4h)\n qi = Reshape (qh, s4h2)\n"
        f" qm = Reshape (qi, s3m)\n z = MatMul (qm, wo){_BACK}"
    )
    decl = (
        f"{_TOKENS_DECL}, float[8, 8] wq, int64[4] s4h = {{2, 36, 2, 4}}, int64[4] s4h2 = {{2, 36, 2, 4}}, "
        f"int64[3] s3m = {{2, 36, 8}}, float[8, 8] wo, {_BACK_DECL}"
    )
    res = check(Case("idr", net(body, decl), target="q", coupled=("qi",)))
    assert shape_of(res.model, "qi") == (2, 36, 2, 2)
