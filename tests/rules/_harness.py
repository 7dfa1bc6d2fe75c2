"""What every rule test shares: a `Case` (a small model in ONNX text plus what must happen to
one channel group) and `check`, which prunes it and runs the oracles.

A case's model is usually ``x -> producer Conv p -> BODY -> consumer -> out``, written with
`net`: ``p`` is a [B, 8, 6, 6] prunable channel space, BODY reads it and writes ``y``, and the
consumer (a 1x1 Conv by default) reads ``y``. ``expect`` is either ``"prune"`` (the group of
``target`` loses channels and the zero-group oracle holds at atol 1e-5) or ``"block:<reason>"``
(the group is blocked and one reason contains the substring). Every test module keeps its cases
in a module-level ``CASES`` list, which `tests/test_registry.py` reads to check that every
registered rule has a case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest

import onnx_ir as ir
import spa_nm
from spa_nm.facts import Slot
from spa_nm.graph import ChannelGroup, DependencyGraph
from spa_nm.io import infer_shapes
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent

__all__ = ["Case", "build", "check", "group_of", "ids", "net", "shape_of", "variants"]

ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    expect: str = "prune"  # "prune" or "block:<substring of a reason>"
    target: str = "p"  # a value whose channel group is checked
    coupled: tuple[str, ...] = ()  # values that must share target's group
    separate: tuple[str, ...] = ()  # values that must not
    oracle: bool = True  # False: onnxruntime cannot run the model (a made-up op)
    weights: dict[str, Any] = field(default_factory=dict, hash=False)  # initializer values
    prune_kw: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        assert self.expect == "prune" or self.expect.startswith("block:"), self.expect

    @property
    def blocks(self) -> bool:
        return self.expect != "prune"


def ids(cases: list[Case]) -> list[str]:
    out = [c.id for c in cases]
    dup = sorted({i for i in out if out.count(i) > 1})
    assert not dup, f"duplicate case ids {dup}"
    return out


def variants(cases: list[Case]):
    """pytest parameters for a CASES list, named by case id."""
    return pytest.mark.parametrize("case", cases, ids=ids(cases))


# -- model text ----------------------------------------------------------------------------


def net(
    body: str,
    decl: str = "",
    *,
    opset: int = 13,
    c: int = 8,
    yc: int | None = None,
    consumer: str | None = "1x1",
    batch: int | str = 2,
    rank: int = 4,
    out: str | None = None,
    domains: str = "",
    inputs: str = "",
) -> str:
    """ONNX text of ``x -> p = Conv(x) -> BODY (writes y) -> consumer -> out``.

    ``c``: channels of ``p``; ``yc``: channels of ``y`` (default ``c``); ``consumer``: ``"1x1"``
    or ``"3x3"`` (padded) Conv, ``"gemm"`` (``y`` is [B, yc], Gemm transB=1), or None (BODY
    writes ``out`` itself, of type ``out``); ``rank``: of ``x``, ``p`` and ``y`` (3: Conv1d);
    ``inputs``: more graph inputs (declarations); ``domains``: more opset imports.
    """
    yc = c if yc is None else yc
    sp = rank - 2
    k3 = ", ".join(["3"] * sp)
    pads = ", ".join(["1"] * (2 * sp))
    xdims = ", ".join(["6"] * sp)
    syms = ", ".join(f"S{i}" for i in range(sp))
    decls = [f"float[{c}, 3, {k3}] wp", f"float[{c}] bp"]
    if consumer == "1x1":
        ones = ", ".join(["1"] * sp)
        decls += [f"float[4, {yc}, {ones}] wc", "float[4] bc"]
        tail = "out = Conv (y, wc, bc)"
        out = f"float[{batch}, 4, {syms}]"
    elif consumer == "3x3":
        decls += [f"float[4, {yc}, {k3}] wc", "float[4] bc"]
        tail = f"out = Conv <pads = [{pads}]> (y, wc, bc)"
        out = f"float[{batch}, 4, {syms}]"
    elif consumer == "gemm":
        decls += [f"float[4, {yc}] wc", "float[4] bc"]
        tail = "out = Gemm <transB = 1> (y, wc, bc)"
        out = f"float[{batch}, 4]"
    elif consumer is None:
        assert out is not None, "a model without a consumer declares its output type"
        tail = ""
    else:
        raise ValueError(consumer)
    if decl:
        decls.append(decl)
    ir_version = 10 if opset <= 21 else 11
    body = "\n  ".join(line.strip() for line in body.strip().split("\n"))
    return f"""
<ir_version: {ir_version}, opset_import: ["" : {opset}{domains}]>
case (float[{batch}, 3, {xdims}] x{", " + inputs if inputs else ""}) => ({out} out)
<{", ".join(decls)}>
{{
  p = Conv <pads = [{pads}]> (x, wp, bp)
  {body}
  {tail}
}}
"""


# -- building and checking -------------------------------------------------------------------


def _random_init(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Seeded values of a declared shape, scaled by 1/sqrt(fan-in) so activations stay O(1);
    names containing ``var`` (variances) are positive."""
    arr = rng.standard_normal(shape)
    if "var" in name:
        return (np.abs(arr) + 0.5).astype(np.float32)
    fan = math.prod(shape[1:]) if len(shape) >= 2 else 1
    return (arr / math.sqrt(max(fan, 1))).astype(np.float32)


def to_proto(case: Case, seed: int = 0) -> onnx.ModelProto:
    """Parse the text; declared initializers without a value get `_random_init` values."""
    model = onnx.parser.parse_model(case.text)
    rng = np.random.default_rng(seed)
    produced = {o for n in model.graph.node for o in n.output}
    keep = []
    for vi in model.graph.value_info:
        if vi.name in produced:
            keep.append(vi)
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        arr = case.weights.get(vi.name)
        arr = _random_init(vi.name, shape, rng) if arr is None else np.asarray(arr)
        model.graph.initializer.append(onnx.numpy_helper.from_array(arr, vi.name))
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for init in model.graph.initializer:  # valued declarations may be overridden too
        if init.name in case.weights:
            init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(case.weights[init.name]), init.name))
    return model


def build(case: Case, seed: int = 0) -> ir.Model:
    """The case's model as spa_nm.load would give it: checked, shapes inferred."""
    proto = to_proto(case, seed)
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    return model


def group_of(dg: DependencyGraph, value: str) -> ChannelGroup:
    """The group of ``value``'s channel axis (axis 1, else its only slot)."""
    slots = [s for g in dg.groups for s in g.slots if s.value == value]
    assert slots, f"{value} carries no channel slot"
    pick = Slot(value, (1,)) if Slot(value, (1,)) in slots else None
    if pick is None:
        assert len(slots) == 1, f"{value} has several slots {slots}: name one"
        pick = slots[0]
    g = dg.group_of(pick)
    assert g is not None
    return g


def shape_of(model: ir.Model, name: str) -> tuple[int, ...] | None:
    for node in model.graph:
        for v in node.outputs:
            if v.name == name:
                return None if v.shape is None else tuple(v.shape)
    for v in model.graph.inputs:
        if v.name == name:
            return tuple(v.shape)
    return None


def check(case: Case, ratio: float = 0.5, **prune_kw: Any) -> spa_nm.PruneResult:
    """Prune the case and assert what it expects; return the result for further checks."""
    model = build(case)
    kw = {"round_to": 1, **case.prune_kw, **prune_kw}
    res = spa_nm.prune(model, ratio, check=case.oracle, **kw)
    dg = res.graph
    grp = group_of(dg, case.target)
    reasons = [b.reason for b in grp.blocked]
    for v in case.coupled:
        assert group_of(dg, v) is grp, f"{v} is not in the group of {case.target}"
    for v in case.separate:
        assert group_of(dg, v) is not grp, f"{v} shares the group of {case.target}"
    # the model the plan was made on: shapes of ops ONNX cannot infer are filled in there
    before = shape_of(res.source if res.source is not None else model, case.target)
    after = shape_of(res.model, case.target)
    if case.blocks:
        want = case.expect.removeprefix("block:")
        assert not grp.prunable, f"expected a block ({want}), the group is prunable"
        assert any(want in r for r in reasons), (want, reasons)
        assert grp.id not in res.plan.removed
        assert after == before, f"blocked {case.target} changed shape {before} -> {after}"
    else:
        assert grp.prunable, f"the group of {case.target} is blocked: {reasons}"
        assert grp.id in res.plan.removed
        assert res.report["channels_removed"] > 0
        assert res.report["params_after"] < res.report["params_before"]
        axis = next(s.axes for s in grp.slots if s.value == case.target)
        assert math.prod(after[a] for a in axis) < math.prod(before[a] for a in axis), (
            f"{case.target} kept its channels: {before} -> {after}"
        )
    if case.oracle:
        check_model(res.model)
        assert_prune_equivalent(model, res, atol=ATOL)  # blocked cases: the rest stays exact
    return res
