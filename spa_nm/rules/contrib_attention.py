"""onnxruntime's contrib attention ops (com.microsoft): MultiHeadAttention and
GroupQueryAttention over separate Q/K/V projections share the ONNX Attention op's facts
(`attention._sdpa`); the fused Attention owns its packed Q/K/V weights, so a head is a
producer unit there."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa_nm.facts import Blocked, FixInfo, Fixup, Link, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import block
from spa_nm.rules._registry import rule
from spa_nm.rules.attention import _sdpa, _unused_extra_outputs

__all__: list[str] = []


@rule("MultiHeadAttention", domain="com.microsoft")
def ms_multi_head_attention(node, ctx: RuleContext) -> OpFacts | Blocked:
    """onnxruntime's MultiHeadAttention (contrib op): ``query`` [B, S, N·H], ``key`` [B, L, N·H],
    ``value`` [B, L, N·Hv], optional ``bias`` [N·H + N·H + N·Hv] added to the three inside,
    ``key_padding_mask``, ``attention_bias`` [B|1, N|1, S, L]; output [B, S, N·Hv];
    attribute ``num_heads``. The separate-projection form is the ONNX Attention op with
    3-D inputs and ``Hq = Hkv = num_heads``: whole heads (and, without a bias, head dims)
    prune, ``num_heads`` is rewritten. Packed QKV/KV, 4-D (already split) keys and a past
    cache block."""
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    names = (q, k, v, y)
    if not any(ctx.slots(n) for n in names if n):
        return OpFacts()
    if any(n is None for n in names) or not all(ctx.static(n) for n in names):
        return block(ctx, "MultiHeadAttention with packed Q/K/V or unknown shapes")
    shapes = [ctx.shape(n) for n in names]
    if any(len(s) != 3 for s in shapes):
        return block(ctx, "MultiHeadAttention with packed or per-head (4-D) inputs")
    if any(ctx.input(i) is not None for i in range(6, len(node.inputs))):
        return block(ctx, "MultiHeadAttention with a past key/value cache")
    if (b := _unused_extra_outputs(node, ctx)) is not None:
        return b
    bias = ctx.input(3)
    if bias is not None and not ctx.is_param(bias):
        return block(ctx, "MultiHeadAttention bias is computed at run time")
    n = int(ctx.attr("num_heads", 0) or 0)
    if not n or any(s[2] % n for s in shapes[:3]) or shapes[1][1] != shapes[2][1]:
        return block(ctx, "MultiHeadAttention head count does not divide")
    ms = ctx.shape(ctx.input(5)) if ctx.input(5) else None
    return _sdpa(node, ctx, names, shapes, 3, n, n, ms, heads_attrs=("num_heads", None), bias=bias)


@rule("GroupQueryAttention", domain="com.microsoft")
def ms_group_query_attention(node, ctx: RuleContext) -> OpFacts | Blocked:
    """onnxruntime's GroupQueryAttention (contrib op): ``query`` [B, S, Nq·H], ``key`` and
    ``value`` [B, S, Nkv·H], ``past_key``/``past_value`` [B, Nkv, P, H], ``seqlens_k``,
    ``total_sequence_length``, optional ``cos_cache``/``sin_cache`` (rotary inside when
    ``do_rotary``); outputs [B, S, Nq·H] and the present K/V. Attributes ``num_heads`` and
    ``kv_num_heads``. Whole K/V heads prune with the query heads that read them; both
    counts are rewritten. A past cache (a graph input of fixed layout), packed QKV or a used
    present output block, and so do head dims (onnxruntime's kernels take head sizes in
    multiples of 8, and rotate head-dim pairs inside with ``do_rotary``)."""
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    names = (q, k, v, y)
    if not any(ctx.slots(x) for x in names if x):
        return OpFacts()
    if k is None or v is None:
        return block(ctx, "GroupQueryAttention with packed Q/K/V")
    if not all(ctx.static(x) for x in names):
        return block(ctx, "GroupQueryAttention with unknown shapes")
    if ctx.input(3) is not None or ctx.input(4) is not None:
        return block(ctx, "GroupQueryAttention with a past key/value cache")
    if (b := _unused_extra_outputs(node, ctx)) is not None:
        return b
    if getattr(ctx.view, "attention", "heads") != "heads":
        # its kernels take head sizes in multiples of 8 only, and rotate head-dim pairs inside
        return block(ctx, "GroupQueryAttention prunes whole heads only (its kernels fix the head size)")
    shapes = [ctx.shape(x) for x in names]
    hq, hkv = int(ctx.attr("num_heads", 0) or 0), int(ctx.attr("kv_num_heads", 0) or 0)
    if (
        any(len(s) != 3 for s in shapes)
        or not hq
        or not hkv
        or hq % hkv
        or shapes[0][2] % hq
        or shapes[1][2] % hkv
        or shapes[2][2] % hkv
    ):
        return block(ctx, "GroupQueryAttention head counts do not divide")
    ab = ctx.input(10) if len(node.inputs) > 10 else None
    ms = ctx.shape(ab) if ab else None
    return _sdpa(node, ctx, names, shapes, 3, hq, hkv, ms, heads_attrs=("num_heads", "kv_num_heads"))


@rule("Attention", domain="com.microsoft")
def ms_attention(node, ctx: RuleContext) -> OpFacts | Blocked:
    """onnxruntime's fused Attention (contrib op, what its transformer optimizer makes of a
    BERT layer): ``input`` [B, S, D_in], ``weights`` [D_in, Dq + Dk + Dv] (the Q, K and V
    projections side by side; ``qkv_hidden_sizes`` gives the three widths, else equal),
    ``bias`` [Dq + Dk + Dv], ``mask_index``, ``past``, ``attention_bias``; output
    [B, S, Dv]; attribute ``num_heads``.

    The op owns the projections, so a head is a producer unit: its Q, K and V weight columns
    and bias entries go, with the head's output columns (and the next layer's rows). The
    output of a zeroed head is 0 (zero V times any attention), so it resets. ``num_heads``
    and ``qkv_hidden_sizes`` are rewritten. Only whole heads: its Q·Kᵀ head dims have no
    value of their own to carry a channel."""
    x, w, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    if not any(ctx.slots(n) for n in (x, y) if n):
        return OpFacts()
    if w is None or not ctx.is_param(w) or (bias is not None and not ctx.is_param(bias)):
        return block(ctx, "Attention weights are computed at run time")
    if ctx.input(4) is not None:
        return block(ctx, "Attention with a past key/value cache")
    if (b := _unused_extra_outputs(node, ctx)) is not None:
        return b
    if getattr(ctx.view, "attention", "heads") != "heads":
        return block(ctx, "the fused Attention prunes whole heads only (its head dims have no value of their own)")
    ws, ys = ctx.shape(w), ctx.shape(y)
    n = int(ctx.attr("num_heads", 0) or 0)
    sizes = ctx.attr("qkv_hidden_sizes")
    if ws is None or len(ws) != 2 or ys is None or not isinstance(ys[-1], int) or not n:
        return block(ctx, "Attention with unknown shapes")
    dq, dk, dv_all = [int(v) for v in sizes] if sizes else [ws[1] // 3] * 3
    if dq + dk + dv_all != ws[1] or dq != dk or dq % n or dv_all % n or ys[-1] != dv_all:
        return block(ctx, "Attention weight widths do not match its heads")
    ab = ctx.input(5) if len(node.inputs) > 5 else None
    ms = ctx.shape(ab) if ab else None
    if ms is not None and len(ms) == 4 and ms[1] != 1:
        return block(ctx, "the attention bias has a head axis")
    ry = len(ys) - 1
    sy = Slot(y, (ry,))
    for o in ctx.slots(y):
        if o != sy:
            return block(ctx, f"Attention does not carry channel slot {o}")
    d, dv = dq // n, dv_all // n
    hub = np.repeat(np.arange(n), dv) * dv  # output elements of head h -> its first
    cols = np.concatenate(
        [np.repeat(np.arange(n), d) * dv, np.repeat(np.arange(n), d) * dv, np.arange(dv_all)]
    )
    facts = OpFacts()
    facts.links.append(Link(sy, sy, np.arange(dv_all), hub))
    facts.params.append(Param(w, 1, sy, Role.WEIGHT_OUT, cols))
    if bias is not None:
        facts.params.append(Param(bias, 0, sy, Role.BIAS, cols))
    rx = ctx.rank(x)
    for o in ctx.slots(x):
        if rx is None or o != Slot(x, (rx - 1,)):
            return block(ctx, f"Attention does not carry channel slot {o}")
        facts.params.append(Param(w, 0, o, Role.WEIGHT_IN))
    facts.resets.append(sy)
    facts.fixups.append(_fused_heads_fixup(node.name, y, ry, dv, (dq, dk, dv_all) if sizes else None))
    return facts


def _fused_heads_fixup(node_name: str, y: str, axis: int, dv: int, sizes) -> Fixup:
    def apply(node, info: FixInfo) -> None:
        heads = int(info.new_shape(y)[axis]) // dv
        old = int(node.attributes["num_heads"].value)
        node.attributes["num_heads"] = ir.AttrInt64("num_heads", heads)
        if sizes is not None:
            new = [int(s) * heads // old for s in sizes]
            node.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", new)

    return Fixup(node_name, "rewrite the fused Attention head count", apply)
