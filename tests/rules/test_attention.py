"""spa_nm/rules/attention.py: MatMul between two activations (QKᵀ, attention·V), the head split
(Reshape + Transpose) collapsing onto heads or the head dim, and the ONNX Attention op.

Every model: ``p`` ([2, 8, 6, 6], a Conv) is read as 36 tokens of 8 channels, projected to
Q, K and V (MatMul with weights), split into heads, attended, merged, projected back to 8
channels and reshaped to an image for the harness' 1x1 consumer. The zero-group oracle (atol
1e-5) runs on each; the structural asserts check that heads (or head dims) went, not only
channels somewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

import spa_nm
from tests.rules._harness import Case, build, check, group_of, net, shape_of, variants

T = 36  # tokens


def _split(name: str, src: str, heads: int, d: int, k_style: str = "0213") -> str:
    """``src`` [2, T, heads*d] -> ``{name}t`` [2, heads, T, d] (or K transposed)."""
    lines = f"{name}h = Reshape ({src}, {name}s)\n"
    if k_style == "0231":  # K transposed in one step: [2, heads, d, T], heads and d adjacent
        lines += f" {name}t = Transpose <perm = [0, 2, 3, 1]> ({name}h)\n"
    elif k_style == "0213+0132":  # two steps (the legacy exporter's SDPA)
        lines += f" {name}u = Transpose <perm = [0, 2, 1, 3]> ({name}h)\n"
        lines += f" {name}t = Transpose <perm = [0, 1, 3, 2]> ({name}u)\n"
    else:
        lines += f" {name}t = Transpose <perm = [0, 2, 1, 3]> ({name}h)\n"
    return lines


def _decl_split(name: str, heads: int, d: int) -> str:
    return f"int64[4] {name}s = {{2, {T}, {heads}, {d}}}"


def mha(
    heads: int = 2,
    d: int = 4,
    kv: int | None = None,
    k_style: str = "0231",
    fused: bool = False,
    scores: str = "",
    scores_decl: str = "",
) -> tuple[str, str]:
    """Multi-head attention on p's tokens; ``kv`` < ``heads``: grouped-query (repeat_kv as
    Unsqueeze + Expand + Reshape); ``scores`` edits ``s`` into ``sm`` before the softmax."""
    kv = kv or heads
    rep = heads // kv
    hd, kd = heads * d, kv * d
    body = "r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n"
    decl = [f"int64[3] s3 = {{2, 8, {T}}}"]
    if fused:
        body += " f = MatMul (tok, wqkv)\n fb = Add (f, bqkv)\n q, k, v = Split <axis = 2> (fb, sizes)\n"
        decl += [
            f"float[8, {hd + 2 * kd}] wqkv",
            f"float[{hd + 2 * kd}] bqkv",
            f"int64[3] sizes = {{{hd}, {kd}, {kd}}}",
        ]
    else:
        body += " q = MatMul (tok, wq)\n k = MatMul (tok, wk)\n v = MatMul (tok, wv)\n"
        decl += [f"float[8, {hd}] wq", f"float[8, {kd}] wk", f"float[8, {kd}] wv"]
    body += " " + _split("q", "q", heads, d) + " " + _split("k", "k", kv, d, k_style)
    body += " " + _split("v", "v", kv, d)
    decl += [_decl_split("q", heads, d), _decl_split("k", kv, d), _decl_split("v", kv, d)]
    kt, vt = "kt", "vt"
    if rep > 1:  # repeat_kv: [2, kv, ., .] -> [2, kv, rep, ., .] -> [2, heads, ., .]
        k_dims = (
            f"{d}, {T}" if k_style == "0231" else f"{T}, {d}" if k_style == "0213" else f"{d}, {T}"
        )
        body += (" ke = Unsqueeze (kt, ax2)\n kx = Expand (ke, kxs)\n kr = Reshape (kx, krs)\n"
                 " ve = Unsqueeze (vt, ax2)\n vx = Expand (ve, vxs)\n vr = Reshape (vx, vrs)\n")  # fmt: skip
        decl += ["int64[1] ax2 = {2}", f"int64[5] kxs = {{2, {kv}, {rep}, {k_dims}}}",
                 f"int64[4] krs = {{2, {heads}, {k_dims}}}", f"int64[5] vxs = {{2, {kv}, {rep}, {T}, {d}}}",
                 f"int64[4] vrs = {{2, {heads}, {T}, {d}}}"]  # fmt: skip
        kt, vt = "kr", "vr"
    body += f" s = MatMul (qt, {kt})\n"
    body += scores or " sm = Div (s, scale)\n"
    decl += ["float scale = {2.0}"]
    if scores_decl:
        decl.append(scores_decl)
    body += (f" a = Softmax <axis = -1> (sm)\n o = MatMul (a, {vt})\n ot = Transpose <perm = [0, 2, 1, 3]> (o)\n"
             f" om = Reshape (ot, s_merge)\n z = MatMul (om, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n"
             f" y = Reshape (zt, s4)")  # fmt: skip
    decl += [
        f"int64[3] s_merge = {{2, {T}, {hd}}}",
        f"float[{hd}, 8] wo",
        "int64[4] s4 = {2, 8, 6, 6}",
    ]
    return body, ", ".join(decl)


def case(cid: str, *args, expect: str = "prune", target: str = "q", prune_kw=None, opset: int = 13,
         coupled=(), separate=(), weights=None, **kw) -> Case:  # fmt: skip
    body, decl = mha(*args, **kw)
    return Case(cid, net(body, decl, opset=opset), expect, target=target, coupled=coupled,
                separate=separate, prune_kw=prune_kw or {}, weights=weights or {})  # fmt: skip


CAUSAL = np.where(np.tril(np.ones((T, T))) > 0, 0.0, -1e4).astype(np.float32).reshape(1, 1, T, T)

CASES: list[Case] = [
    # whole heads: Q, K, V rows and the output projection's columns, through every layout of K
    *[
        case(f"heads_k{style}", k_style=style, coupled=("k", "v", "s", "o", "om"))
        for style in ("0231", "0213+0132")
    ],
    case("heads_fused_qkv_split", fused=True, target="f", coupled=("q", "k", "v", "s")),
    case("heads_gqa_expand", 4, 4, 2, coupled=("k", "v", "s")),
    case("heads_gqa_k_transposed_first", 4, 4, 2, k_style="0213+0132", coupled=("k", "v", "s")),
    # masks and biases on the scores do not block heads
    case(
        "heads_causal_add",
        scores=" sc = Div (s, scale)\n sm = Add (sc, mask)\n",
        scores_decl=f"float[1, 1, {T}, {T}] mask",
        weights={"mask": CAUSAL},
    ),
    case(
        "heads_causal_where",
        scores=" sc = Div (s, scale)\n sm = Where (keep, sc, neg)\n",
        scores_decl=f"bool[1, 1, {T}, {T}] keep, float neg = {{-10000.0}}",
        weights={"keep": CAUSAL == 0},
    ),
    case(
        "heads_relative_position_bias",  # Swin: a [heads, T, T] constant, sliced per head
        scores=" sc = Div (s, scale)\n sm = Add (sc, rpb)\n",
        scores_decl=f"float[2, {T}, {T}] rpb",
    ),
    # head dims: the same index of every Q and K head; V's head dim follows the projection
    case("head_dim_qk", prune_kw={"attention": "head_dim"}, coupled=("k",), separate=("v",)),
    case(
        "head_dim_v",
        prune_kw={"attention": "head_dim"},
        target="v",
        coupled=("o",),
        separate=("q",),
    ),
    case("head_dim_fused_qkv", fused=True, target="f", prune_kw={"attention": "head_dim"}),
    case("head_dim_gqa", 4, 4, 2, prune_kw={"attention": "head_dim"}, coupled=("k",)),
]


@variants(CASES)
def test_case(case):
    check(case)


def _einsum(body: str) -> str:
    """Q·Kᵀ and attention·V written as Einsum (K not transposed)."""
    return body.replace(
        "s = MatMul (qt, kt)", 's = Einsum <equation = "bhqd,bhkd->bhqk"> (qt, kt)'
    ).replace("o = MatMul (a, vt)", 'o = Einsum <equation = "bhqk,bhkd->bhqd"> (a, vt)')


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_einsum_attention(mode):
    body, decl = mha(2, 4, k_style="0213")
    res = check(
        Case(
            "einsum",
            net(_einsum(body), decl),
            target="q",
            coupled=("k",),
            prune_kw={"attention": mode},
        )
    )
    assert "Einsum" in {n.op_type for n in res.model.graph}
    if mode == "heads":
        assert shape_of(res.model, "s") == (2, 1, T, T)
    else:
        assert shape_of(res.model, "qt")[3] == 2 and shape_of(res.model, "s") == (2, 2, T, T)


def test_einsum_ellipsis_and_implicit_output():
    body, decl = mha(2, 4, k_style="0213")
    body = body.replace(
        "s = MatMul (qt, kt)", 's = Einsum <equation = "...qd,...kd->...qk"> (qt, kt)'
    ).replace("o = MatMul (a, vt)", 'o = Einsum <equation = "...ik,...kj"> (a, vt)')
    res = check(Case("einsum_ell", net(body, decl), target="q", coupled=("k", "v")))
    assert shape_of(res.model, "s") == (2, 1, T, T)


def _dims(res, name):
    return shape_of(res.model, name)


def test_heads_rewrite_every_shape_constant():
    """Half of 4 heads go: the split and merge Reshape targets say 2 heads, the scores have 2."""
    c = case("heads", 4, 4, coupled=("k", "v"))
    res = check(c)
    assert _dims(res, "s") == (2, 2, T, T)
    assert _dims(res, "qh") == (2, T, 2, 4) and _dims(res, "kh") == (2, T, 2, 4)
    assert _dims(res, "om") == (2, T, 8)
    consts = {v.name: v.const_value.numpy().tolist() for v in res.model.graph.initializers.values()
              if v.const_value is not None and v.const_value.dtype.numpy() == np.int64}  # fmt: skip
    assert [2, T, 2, 4] in consts.values() and [2, T, 8] in consts.values()


def test_head_dim_keeps_heads():
    res = check(case("hd", 2, 8, prune_kw={"attention": "head_dim"}))
    assert _dims(res, "s") == (2, 2, T, T)  # both heads stay
    assert _dims(res, "qt")[3] == 4 and _dims(res, "kt")[2] == 4  # 4 of 8 head dims each


def test_gqa_removes_a_kv_head_with_its_query_heads():
    res = check(case("gqa", 4, 4, 2))
    assert _dims(res, "kh") == (2, T, 1, 4)  # one of two K/V heads
    assert _dims(res, "s") == (2, 2, T, T)  # and its two query heads
    dg = res.graph
    assert group_of(dg, "q").size == 2  # units: K/V heads, not query heads


def test_mqa_heads_do_not_prune():
    """One K/V head shared by every query head: removing a query head alone is not exact."""
    model = build(case("mqa", 4, 4, 1))
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert shape_of(res.model, "s") == (2, 4, T, T)
    grp = group_of(res.graph, "q")
    assert not grp.prunable


def test_rotary_keeps_pairs_in_head_dim_mode():
    """rotate_half: [-x2, x1] pairs index j with j + d/2; pruning a pair keeps it exact."""
    d = 8
    rot = (" qa = Slice (qt, z0, half, ax3)\n qb = Slice (qt, half, big, ax3)\n qn = Neg (qb)\n"
           " qr = Concat <axis = 3> (qn, qa)\n q1 = Mul (qt, cos)\n q2 = Mul (qr, sin)\n qq = Add (q1, q2)\n"
           " s2 = MatMul (qq, kt)\n sm = Div (s2, scale)\n")  # fmt: skip
    decl = (f"int64[1] z0 = {{0}}, int64[1] half = {{{d // 2}}}, int64[1] big = {{{d}}}, int64[1] ax3 = {{3}}, "
            f"float[1, 1, {T}, {d}] cos, float[1, 1, {T}, {d}] sin")  # fmt: skip
    c = case(
        "rot",
        2,
        d,
        scores=rot,
        scores_decl=decl,
        prune_kw={"attention": "head_dim"},
        coupled=("qq",),
    )
    res = check(c)
    grp = group_of(res.graph, "q")
    assert grp.size == d // 2  # pairs (j, j + d/2) are one unit
    assert _dims(res, "qq")[3] == d // 2


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_unknown_mode_and_modes(mode):
    model = build(case("m", 2, 4))
    assert spa_nm.prune(model, 0.5, attention=mode, round_to=1).report["groups_pruned"] > 0
    with pytest.raises(spa_nm.errors.ConfigError, match="attention must be one of"):
        spa_nm.prune(model, 0.5, attention="rows")


# -- the ONNX Attention op (opset 23) --------------------------------------------------------


def attention_op(
    hq: int, hkv: int, d: int = 4, attrs: str = "", extra_out: str = "", mask: str = ""
) -> tuple[str, str]:
    body = ("r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n q = MatMul (tok, wq)\n k = MatMul (tok, wk)\n"
            f" v = MatMul (tok, wv)\n a{extra_out} = Attention <q_num_heads = {hq}, kv_num_heads = {hkv}{attrs}> (q, k, v{mask})\n"
            " z = MatMul (a, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)")  # fmt: skip
    decl = (f"int64[3] s3 = {{2, 8, {T}}}, float[8, {hq * d}] wq, float[8, {hkv * d}] wk, float[8, {hkv * d}] wv, "
            f"float[{hq * d}, 8] wo, int64[4] s4 = {{2, 8, 6, 6}}")  # fmt: skip
    return body, decl


def op_case(cid, hq, hkv, expect="prune", prune_kw=None, **kw) -> Case:
    body, decl = attention_op(hq, hkv, **kw)
    if "mask" in kw:
        decl += f", float[1, {hq}, {T}, {T}] m"
    return Case(cid, net(body, decl, opset=23), expect, target="q", prune_kw=prune_kw or {})


OP_CASES = [
    op_case("op_heads_mha", 4, 4),
    op_case("op_heads_gqa", 4, 2),
    op_case("op_heads_causal_scale", 4, 2, attrs=", is_causal = 1, scale = 0.3"),
    op_case("op_head_dim_gqa", 4, 2, prune_kw={"attention": "head_dim"}),
    op_case("op_mask_with_heads_blocks", 4, 4, mask=", m", expect="block:mask has a head axis"),
    op_case("op_mask_with_heads_head_dim", 4, 4, mask=", m", prune_kw={"attention": "head_dim"}),
]


@variants(OP_CASES)
def test_attention_op(case):
    check(case)


def _attrs(res, op="Attention"):
    (node,) = [n for n in res.model.graph if n.op_type == op]
    return {k: a.value for k, a in node.attributes.items()}


def test_attention_op_rewrites_head_counts():
    res = check(op_case("gqa", 4, 2))
    assert _attrs(res)["q_num_heads"] == 2 and _attrs(res)["kv_num_heads"] == 1
    assert shape_of(res.model, "k") == (2, T, 4)


def test_attention_op_head_dim_keeps_the_scale():
    res = check(op_case("hd", 4, 2, d=8, prune_kw={"attention": "head_dim"}))
    assert _attrs(res)["q_num_heads"] == 4 and _attrs(res)["kv_num_heads"] == 2
    assert _attrs(res)["scale"] == pytest.approx(1 / np.sqrt(8))  # the original head size's
    assert shape_of(res.model, "q") == (2, T, 16)  # 4 of 8 dims in each of 4 heads


def test_attention_op_4d():
    body = ("r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n q = MatMul (tok, wq)\n k = MatMul (tok, wk)\n"
            " v = MatMul (tok, wv)\n" + _split("q", "q", 4, 2) + " " + _split("k", "k", 2, 2) + " " + _split("v", "v", 2, 2) +
            " a = Attention (qt, kt, vt)\n at = Transpose <perm = [0, 2, 1, 3]> (a)\n am = Reshape (at, sm)\n"
            " z = MatMul (am, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)")  # fmt: skip
    decl = (f"int64[3] s3 = {{2, 8, {T}}}, float[8, 8] wq, float[8, 4] wk, float[8, 4] wv, float[8, 8] wo, "
            f"{_decl_split('q', 4, 2)}, {_decl_split('k', 2, 2)}, {_decl_split('v', 2, 2)}, "
            f"int64[3] sm = {{2, {T}, 8}}, int64[4] s4 = {{2, 8, 6, 6}}")  # fmt: skip
    res = check(Case("op4d", net(body, decl, opset=23), target="q", coupled=("k", "v")))
    assert shape_of(res.model, "a") == (2, 2, T, 2)


def test_attention_op_used_cache_output_blocks():
    body, decl = attention_op(4, 4, extra_out=", pk, pv")
    body = body.replace(
        "y = Reshape (zt, s4)",
        "y0 = Reshape (zt, s4)\n pks = ReduceSum <keepdims = 0> (pk)\n y = Add (y0, pks)",
    )
    check(Case("cache", net(body, decl, opset=23), "block:is used", target="q"))


# -- onnxruntime's contrib attention ops (com.microsoft) ------------------------------------

MS = ', "com.microsoft" : 1'


def mha_op(n: int, d: int = 4, bias: bool = False, extra: str = "") -> tuple[str, str]:
    """MultiHeadAttention over separate Q/K/V projections of the 36 tokens."""
    b = ", qkvb" if bias else ""
    body = ("r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n q = MatMul (tok, wq)\n k = MatMul (tok, wk)\n"
            f" v = MatMul (tok, wv)\n a = com.microsoft.MultiHeadAttention <num_heads = {n}{extra}> (q, k, v{b})\n"
            " z = MatMul (a, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)")  # fmt: skip
    decl = (f"int64[3] s3 = {{2, 8, {T}}}, float[8, {n * d}] wq, float[8, {n * d}] wk, float[8, {n * d}] wv, "
            f"float[{n * d}, 8] wo, int64[4] s4 = {{2, 8, 6, 6}}" + (f", float[{3 * n * d}] qkvb" if bias else ""))  # fmt: skip
    return body, decl


def gqa_op(hq: int, hkv: int, d: int = 8) -> tuple[str, str]:
    """GroupQueryAttention without a past cache (a prompt-only graph): seqlens_k = T - 1;
    onnxruntime wants head sizes in multiples of 8."""
    body = ("r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n q = MatMul (tok, wq)\n k = MatMul (tok, wk)\n"
            f" v = MatMul (tok, wv)\n a, pk, pv = com.microsoft.GroupQueryAttention <num_heads = {hq}, kv_num_heads = {hkv}>"
            " (q, k, v, , , sl, tl)\n z = MatMul (a, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)")  # fmt: skip
    decl = (f"int64[3] s3 = {{2, 8, {T}}}, float[8, {hq * d}] wq, float[8, {hkv * d}] wk, float[8, {hkv * d}] wv, "
            f"float[{hq * d}, 8] wo, int64[4] s4 = {{2, 8, 6, 6}}, int32[2] sl = {{{T - 1}, {T - 1}}}, int32 tl = {{{T}}}")  # fmt: skip
    return body, decl


def fused_op(n: int, d: int = 4, sizes: str = "") -> tuple[str, str]:
    """onnxruntime's fused Attention: the op holds the packed Q/K/V weights and bias."""
    body = ("r = Reshape (p, s3)\n tok = Transpose <perm = [0, 2, 1]> (r)\n"
            f" a = com.microsoft.Attention <num_heads = {n}{sizes}> (tok, wqkv, bqkv)\n"
            " z = MatMul (a, wo)\n zt = Transpose <perm = [0, 2, 1]> (z)\n y = Reshape (zt, s4)")  # fmt: skip
    decl = (f"int64[3] s3 = {{2, 8, {T}}}, float[8, {3 * n * d}] wqkv, float[{3 * n * d}] bqkv, "
            f"float[{n * d}, 8] wo, int64[4] s4 = {{2, 8, 6, 6}}")  # fmt: skip
    return body, decl


def ms_case(cid, op, expect="prune", prune_kw=None, target="q") -> Case:
    body, decl = op
    return Case(cid, net(body, decl, opset=17, domains=MS), expect, target=target, prune_kw=prune_kw or {})


MS_CASES = [
    ms_case("mha_heads", mha_op(4)),
    ms_case("mha_heads_bias", mha_op(4, bias=True)),
    ms_case("mha_head_dim", mha_op(4), prune_kw={"attention": "head_dim"}),
    ms_case("mha_head_dim_bias_blocks", mha_op(4, bias=True), "block:prunes whole heads only",
            prune_kw={"attention": "head_dim"}),
    ms_case("gqa_heads", gqa_op(4, 2)),
    ms_case("gqa_head_dim_blocks", gqa_op(4, 2), "block:prunes whole heads only", {"attention": "head_dim"}),
    ms_case("fused_heads", fused_op(4), target="a"),
    ms_case("fused_sizes", fused_op(4, sizes=", qkv_hidden_sizes = [16, 16, 16]"), target="a"),
]  # fmt: skip


@variants(MS_CASES)
def test_contrib_attention(case):
    check(case)


def test_mha_rewrites_num_heads_and_slices_the_bias():
    res = check(ms_case("mha", mha_op(4, bias=True)))
    assert _attrs(res, "MultiHeadAttention")["num_heads"] == 2
    assert shape_of(res.model, "q") == (2, T, 8)
    assert res.model.graph.initializers["qkvb"].const_value.shape == (24,)


def test_gqa_rewrites_both_head_counts():
    res = check(ms_case("gqa", gqa_op(4, 2)))
    attrs = _attrs(res, "GroupQueryAttention")
    assert attrs["num_heads"] == 2 and attrs["kv_num_heads"] == 1
    assert shape_of(res.model, "k") == (2, T, 8)


def test_fused_attention_removes_whole_heads():
    res = check(ms_case("fused", fused_op(4, sizes=", qkv_hidden_sizes = [16, 16, 16]"), target="a"))
    attrs = _attrs(res, "Attention")
    assert attrs["num_heads"] == 2 and list(attrs["qkv_hidden_sizes"]) == [8, 8, 8]
    assert res.model.graph.initializers["wqkv"].const_value.shape[1] == 24
    assert shape_of(res.model, "a") == (2, T, 8)


def test_fused_attention_head_dim_mode_keeps_heads():
    """Head dims of the fused op have no value of their own: heads mode only; in head_dim
    mode its heads stay, with the reason."""
    check(ms_case("f", fused_op(4), "block:prunes whole heads only", {"attention": "head_dim"}, target="a"))


# -- Einsum with a constant weight: a linear layer written as an equation ------------------------


def _einsum_net(text: str, weights: dict[str, tuple[int, ...]]):
    import onnx
    import onnx.parser
    import onnx_ir as ir

    from spa_nm import io

    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in weights.items():
        arr = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return io.infer_shapes(ir.serde.deserialize_model(proto))


KERAS_MHA = """<ir_version: 8, opset_import: ["" : 17]>
mha (float[2, 6, 16] x) => (float[2, 6, 16] y) <float sc = {0.5}> {
  q = Einsum <equation = "abc,cde->abde"> (x, wq)
  k = Einsum <equation = "abc,cde->abde"> (x, wk)
  v = Einsum <equation = "abc,cde->abde"> (x, wv)
  qs = Mul (q, sc)
  s = Einsum <equation = "aecd,abcd->acbe"> (k, qs)
  p = Softmax <axis = -1> (s)
  c = Einsum <equation = "acbe,aecd->abcd"> (p, v)
  o = Einsum <equation = "abcd,cde->abe"> (c, wo)
  h = Einsum <equation = "abc,cd->abd"> (o, w1)
  r = Relu (h)
  y = Einsum <equation = "abd,dc->abc"> (r, w2)
}"""
KERAS_W = {"wq": (16, 4, 4), "wk": (16, 4, 4), "wv": (16, 4, 4), "wo": (4, 4, 16), "w1": (16, 32), "w2": (32, 16)}


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_einsum_dense_attention_and_mlp(mode):
    """Keras' MultiHeadAttention as tf2onnx writes it (EinsumDense projections to [B, T, H, d],
    Einsum scores and context, EinsumDense output) plus an Einsum MLP: the weights' output
    letters are producer axes, their contracted letters consumer axes; heads, head dims and
    the MLP hidden units all prune, exactly."""
    from spa_nm.testing import assert_prune_equivalent

    model = _einsum_net(KERAS_MHA, KERAS_W)
    res = spa_nm.prune(model, 0.5, round_to=1, attention=mode)
    sizes = sorted(res.graph.groups[g].size for g in res.plan.removed)
    # heads (Q/K/V/out), Q·K head dims, V head dims (with the output projection's rows),
    # the output projection's 16 channels (read by the MLP) and the MLP's 32 hidden units
    assert sizes == [4, 4, 4, 16, 32], sizes
    assert_prune_equivalent(model, res, atol=1e-5)
    w = {k: tuple(v.const_value.shape) for k, v in res.model.graph.initializers.items()}
    assert w["wq"] == w["wk"] == w["wv"] == (16, 2, 2) and w["wo"] == (2, 2, 8), w
    assert w["w1"] == (8, 16) and w["w2"] == (16, 16), w


def test_einsum_weight_sharing_a_channel_letter_blocks():
    """A per-channel weight (``"bsh,hk->bhk"``: h in the input, the weight and the output) is
    neither a producer nor a consumer of h: the channel group of h blocks with the reason."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 5, 8] x) => (float[2, 4, 3] y) {
  h = Einsum <equation = "bsd,dh->bsh"> (x, w1)
  y = Einsum <equation = "bsh,hk->bhk"> (h, w2)
}"""
    g = spa_nm.analyze(_einsum_net(text, {"w1": (8, 4), "w2": (4, 3)}))
    reasons = [b.reason for grp in g.groups for b in grp.blocked]
    assert any("indexed by the channel letter 'h'" in r for r in reasons), reasons
