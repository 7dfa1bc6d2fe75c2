"""onnxruntime's fused element-wise and normalization ops (the ``com.microsoft`` contrib ops
that ``onnxruntime.transformers.optimizer.optimize_model`` writes, and the ONNX-domain
``SimplifiedLayerNormalization`` that onnxruntime registers).

Semantics are those of onnxruntime's operator schemas (``docs/ContribOperators.md`` in
microsoft/onnxruntime; the same text is in ``onnxruntime.capi.onnxruntime_pybind11_state.
get_all_operator_schema()``), checked against the CPU kernels of onnxruntime 1.32:

- ``Gelu(X) = 0.5·X·(1 + erf(X/√2))``; ``QuickGelu(X) = X·sigmoid(alpha·X)`` (alpha 1.702);
  ``FastGelu(X, bias?) = 0.5·Z·(1 + tanh(√(2/π)·(Z + 0.044715·Z³)))`` with ``Z = X + bias``;
  ``BiasGelu(A, B) = Gelu(A + B)``; ``BiasAdd(X, bias, skip) = X + bias + skip`` (X and skip
  ``(N, S, C)``, bias ``(C)``; onnxruntime has a CUDA kernel only). Every bias is 1-D over the
  last axis, broadcast as ONNX ``Add`` broadcasts it.
- ``SkipLayerNormalization(input, skip, gamma, beta?, bias?)``: ``s = input + skip + bias``,
  ``output = LayerNorm(s, last axis)·gamma + beta``, outputs ``(output, mean?, inv_std_var?,
  input_skip_bias_sum?)`` with the last one ``s``; skip may be ``(B, S, H)``, ``(1, S, H)`` or
  ``(S, H)``. ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`` is the same with
  the root mean square and no beta (the CPU kernel does add the bias into ``s``).
  ``SimplifiedLayerNormalization(X, scale)`` (ONNX domain, ``axis`` default -1) is RMSNorm.

Coupling (METHODS.md §1.3): the summed inputs are ONNX ``Add``'s broadcasting rule
(`elementwise.broadcast`), applied to the node's summed inputs: full-extent activations share
the slot, a constant bias is a member slice of the channel it is added to (role ``bias``), a
broadcast operand is not coupled. The activation is element-wise, so every axis passes through
and the constant a zeroed channel carries (METHODS.md §1.4) is ``f(κ_x + 0 [+ κ_skip])``: the
bias is a member, zeroed with its channel; gelu(0) = 0, so a fused MLP's hidden channel stays
exact. The norms are `norm.py`'s LayerNorm/RMSNorm row: removing channels of the normalized
last axis changes the statistics, so it is *approximate* (blocked unless allowed); input, skip,
output and the sum output share the channel axis; gamma, beta and bias are member slices; the
output of a zeroed channel is 0 (gamma and beta zeroed), the sum output carries κ_input +
κ_skip.

A note for developers: ``SimplifiedLayerNormalization``
is not an ONNX op, so the ONNX checker that every pruned model passes rejects it: importing
this module registers onnxruntime's schema of it with ONNX (`_register_onnx_schema`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from spa_nm.facts import Blocked, OpFacts, Param, Role, Slot
from spa_nm.rules._context import RuleContext
from spa_nm.rules._helpers import RestrictedContext, block, map_axes, passthrough, unary_transfer
from spa_nm.rules._registry import rule
from spa_nm.rules.elementwise import _gelu, _gelu_tanh, _sigmoid, _size_fn, broadcast
from spa_nm.rules.norm import _normalization

__all__: list[str] = []

MS = "com.microsoft"

log = logging.getLogger(__name__)

Fn = Callable[[np.ndarray], np.ndarray]


def _quick_gelu(alpha: float) -> Fn:
    return lambda v: v * _sigmoid(alpha * v)


class _SumContext(RestrictedContext):
    """``ctx`` seen by `elementwise.broadcast` as one ONNX ``Add`` of the inputs ``ins``
    (indices into the real node's inputs) that writes output ``out``. Blocked reasons still
    name the real node."""

    def __init__(self, ctx: RuleContext, ins: list[int], out: int) -> None:
        super().__init__(ctx, {})
        self._ins, self._out = ins, out

    def input(self, i: int) -> str | None:
        return self._ctx.input(self._ins[i]) if i < len(self._ins) else None

    def output(self, i: int) -> str | None:
        return self._ctx.output(self._out) if i == 0 else None


def _sum(ctx: RuleContext, ins: list[int], out: int, bias: int | None) -> OpFacts | Blocked:
    """Facts of ``output[out] = Σ inputs[ins]`` (ONNX Add broadcasting); the constant at input
    ``bias`` is tagged as a bias. Absent optional inputs are left out."""
    ins = [i for i in ins if ctx.input(i) is not None]
    add = SimpleNamespace(op_type="Add", inputs=[ctx.node.inputs[i] for i in ins])
    facts = broadcast(add, _SumContext(ctx, ins, out))
    if isinstance(facts, Blocked):
        return facts
    b = ctx.input(bias) if bias is not None else None
    facts.params = [
        dataclasses.replace(p, role=Role.BIAS) if p.name == b else p for p in facts.params
    ]
    return facts


def _then(facts: OpFacts, fn: Fn) -> OpFacts:
    """Compose the sum's constant transfer with the element-wise ``fn``."""
    add = facts.transfer
    if add is None:
        return facts

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        with np.errstate(all="ignore"):
            return {s: np.asarray(fn(v), dtype=float) for s, v in add(kappa).items()}

    facts.transfer = transfer
    return facts


def _unary(ctx: RuleContext, fn: Fn) -> OpFacts:
    """Same shape in and out, every axis passes through; the carried constant becomes fn(c)."""
    facts = passthrough(ctx, ctx.input(0), ctx.output(0))
    facts.transfer = unary_transfer(facts.links, _size_fn(ctx), fn)
    return facts


# -- element-wise: activations and bias adds -------------------------------------------------


@rule("Gelu", domain=MS)
def gelu(node, ctx: RuleContext) -> OpFacts:
    """``0.5·X·(1 + erf(X/√2))``, element-wise."""
    return _unary(ctx, _gelu)


@rule("QuickGelu", domain=MS)
def quick_gelu(node, ctx: RuleContext) -> OpFacts:
    """``X·sigmoid(alpha·X)``, element-wise (alpha defaults to 1.702)."""
    return _unary(ctx, _quick_gelu(float(ctx.attr("alpha", 1.702))))


@rule("FastGelu", domain=MS)
def fast_gelu(node, ctx: RuleContext) -> OpFacts | Blocked:
    """The tanh approximation of Gelu of ``X + bias`` (bias optional, 1-D over the last axis)."""
    if ctx.input(1) is None:
        return _unary(ctx, _gelu_tanh)
    facts = _sum(ctx, [0, 1], 0, bias=1)
    return facts if isinstance(facts, Blocked) else _then(facts, _gelu_tanh)


@rule("BiasGelu", domain=MS)
def bias_gelu(node, ctx: RuleContext) -> OpFacts | Blocked:
    """``Gelu(A + B)`` (erf form) with B a 1-D bias over the last axis."""
    facts = _sum(ctx, [0, 1], 0, bias=1)
    return facts if isinstance(facts, Blocked) else _then(facts, _gelu)


@rule("BiasAdd", domain=MS)
def bias_add(node, ctx: RuleContext) -> OpFacts | Blocked:
    """``X + bias + skip``: the residual shares the slot, the bias is a member slice.

    onnxruntime has only a CUDA kernel for BiasAdd: tests/rules/test_contrib.py checks the
    oracle on the model with BiasAdd written as two ONNX Adds (its definition)."""
    return _sum(ctx, [0, 1, 2], 0, bias=1)


# -- normalizations over the last axis (approximate) -----------------------------------------


def _register_onnx_schema() -> None:
    """Tell ONNX's schema registry about ``SimplifiedLayerNormalization``, as onnxruntime
    registers it in the ONNX domain (inputs X: T, scale: V; outputs Y: V, inv_std_var: U
    optional; attributes axis -1, epsilon 1e-5, stash_type 1). Without it the ONNX checker,
    which every pruned model passes through, rejects the models onnxruntime's optimizer writes
    ("No Op registered for SimplifiedLayerNormalization"), and ONNX shape inference stops at
    the node. Y takes X's shape and scale's type. Nothing is done when ONNX knows the op (a
    future standard op of that name wins) or cannot register schemas."""
    import onnx
    import onnx.defs as defs

    name = "SimplifiedLayerNormalization"
    if defs.has(name) or not hasattr(defs, "register_schema"):
        return
    param, opt = defs.OpSchema.FormalParameter, defs.OpSchema.FormalParameterOption
    floats = ["tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)"]

    def infer(ictx) -> None:
        x, scale = ictx.get_input_type(0), ictx.get_input_type(1)
        if x is None:
            return
        y = onnx.TypeProto()
        y.CopyFrom(x)
        if scale is not None and scale.tensor_type.elem_type:
            y.tensor_type.elem_type = scale.tensor_type.elem_type
        ictx.set_output_type(0, y)

    schema = defs.OpSchema(
        name,
        "",
        1,
        "onnxruntime's RMSNorm: X / sqrt(mean(X^2 over axis..-1) + epsilon) * scale",
        inputs=[param("X", "T"), param("scale", "V")],
        outputs=[param("Y", "V"), param("inv_std_var", "U", param_option=opt.Optional)],
        type_constraints=[("T", floats, ""), ("U", floats[1:3], ""), ("V", floats, "")],
        attributes=[
            defs.OpSchema.Attribute(k, onnx.helper.make_attribute(k, v), "")
            for k, v in (("axis", -1), ("epsilon", 1e-5), ("stash_type", 1))
        ],
    )
    try:
        schema.set_type_and_shape_inference_function(infer)
        defs.register_schema(schema)
    except Exception as e:  # an onnx build without Python schemas: the checker stays strict
        log.debug("could not register %s with ONNX: %s", name, e)


_register_onnx_schema()


@rule("SimplifiedLayerNormalization")
def simplified_layer_norm(node, ctx: RuleContext) -> OpFacts:
    """onnxruntime's RMSNorm in the ONNX domain (``X / √(mean(X²) + ε) · scale`` over the axes
    from ``axis``): `norm.py`'s RMSNormalization rule."""
    return _normalization(ctx, [(1, Role.NORM_SCALE)], "the root mean square")


@rule("SkipLayerNormalization", domain=MS)
def skip_layer_norm(node, ctx: RuleContext) -> OpFacts | Blocked:
    """``LayerNorm(input + skip + bias)·gamma + beta`` over the last axis."""
    return _skip_norm(ctx, gamma=2, beta=3, bias=4, stats="the mean and variance")


@rule("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_norm(node, ctx: RuleContext) -> OpFacts | Blocked:
    """``RMSNorm(input + skip + bias)·gamma`` over the last axis."""
    return _skip_norm(ctx, gamma=2, beta=None, bias=3, stats="the root mean square")


def _skip_norm(
    ctx: RuleContext, gamma: int, beta: int | None, bias: int, stats: str
) -> OpFacts | Blocked:
    """The sum stage is ``Add``'s rule into the sum output (else straight into the output);
    the norm stage links the output to the sum on every axis, approximate on the last one."""
    node, op = ctx.node, ctx.node.op_type
    x, y, s = ctx.input(0), ctx.output(0), ctx.output(3)
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:3] if o.name):
        return block(ctx, f"{op} statistics outputs are used")
    r = ctx.rank(x)
    if r is None or ctx.rank(y) != r:
        return block(ctx, "input rank is unknown")
    facts = _sum(ctx, [0, 1, bias], 3 if s is not None else 0, bias=bias)
    if isinstance(facts, Blocked):
        return facts
    add = facts.transfer
    values = [v for v in (x, ctx.input(1), y, s) if v is not None]
    last = r - 1
    sy = Slot(y, (last,))
    # slots over the normalized axis: the last one of every value (skip may have a lower rank)
    on_last = [t for v in values for t in ctx.slots(v) if ctx.rank(v) - 1 in t.axes]
    if on_last:
        if any(len(t.axes) != 1 for t in on_last):
            bad = next(t for t in on_last if len(t.axes) != 1)
            return block(
                ctx,
                f"{op} normalizes over channel slot {bad} and other axes: removing channels "
                "changes the statistics",
            )
        for i in (gamma, beta):
            v = ctx.input(i) if i is not None else None
            if v is not None and not (ctx.is_param(v) and ctx.shape(v) == (ctx.shape(x)[-1],)):
                return block(ctx, f"{op} input {i} is not a per-channel constant")
        facts.approximate.append(
            block(
                ctx,
                f"{op} normalizes over channel slot {on_last[0]}: removing channels changes {stats}",
                tuple(values),
            )
        )
        for i, role in ((gamma, Role.NORM_SCALE), (beta, Role.NORM_SHIFT)):
            v = ctx.input(i) if i is not None else None
            if v is not None:
                facts.params.append(Param(v, 0, sy, role))
        facts.resets.append(sy)
    if s is not None:
        # the output is the sum normalized: the same positions on every axis
        map_axes(ctx, s, y, {a: a for a in range(r)}, facts)
    facts.transfer = _norm_transfer(add, ctx, y, s)
    return facts


def _norm_transfer(add: Any, ctx: RuleContext, y: str, s: str | None) -> Any:
    """The sum output carries Add's constant; the normalized output carries none (a zeroed
    channel of the last axis is reset to 0 by its zeroed gamma and beta instead)."""
    size = _size_fn(ctx)

    def transfer(kappa: Mapping[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
        out = dict(add(kappa)) if add is not None else {}
        if s is None:
            out = {}
        for t in ctx.slots(y):
            out[t] = np.full(size(t), np.nan)
        return out

    return transfer
