"""Random valid ONNX graphs from the ops the rules know, and the properties pruning must keep.

A *recipe* is a JSON-able list of steps; `build` turns any recipe (or any sub-list of one) into a
valid model, so a failing case shrinks by deleting steps (`shrink`). Steps pick their operands
by index modulo the pool of live NCHW tensors, which keeps every sub-list buildable.

Properties (`check`): the pruned model passes the full checker and runs on onnxruntime with the
same input/output signature; it equals the zeroed original (atol 1e-5 + 1e-6·max|y|); ratio 0 is identical;
parameters never increase; every surviving weight is a slice of the original (biases that
absorbed a folded constant excepted); a graph with an op that has no rule is pruned around it
or declined, never invalid. Needs onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Built", "build", "check", "random_recipe", "shrink"]

OPSETS = (11, 13, 17)
ACTS = (
    "Relu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "LeakyRelu",
    "Clip",
    "Exp",
    "Elu",
    "Softplus",
    "Abs",
    "Neg",
)
# ops onnxruntime runs but that have no rule here: the pruner must block around them
NO_RULE = ("LpNormalization", "Shrink", "CumSum")
KINDS = ("conv", "conv", "conv", "dwconv", "gconv", "bn", "act", "act", "add", "concat", "split",
         "shuffle", "se", "chmul", "chadd", "pool", "inorm", "slice", "convt", "resize", "pad")  # fmt: skip


def random_recipe(seed: int, unknown_ops: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(int(rng.integers(2, 12))):
        kind = str(rng.choice(KINDS + (("unknown",) if unknown_ops else ())))
        steps.append({"kind": kind, "a": int(rng.integers(0, 1000)), "b": int(rng.integers(0, 1000)),
                      "n": int(rng.integers(1, 9)), "k": int(rng.integers(0, 1000))})  # fmt: skip
    return {
        "seed": seed,
        "opset": int(rng.choice(OPSETS)),
        "c0": int(rng.integers(2, 7)),
        "hw": int(rng.choice([4, 6, 8])),
        "inputs": int(rng.choice([1, 1, 2])),
        "head": str(rng.choice(["gemm", "gemm", "conv_out", "flatten_gemm"])),
        "extra_outputs": int(rng.choice([0, 0, 1])),
        "steps": steps,
    }


@dataclass
class Built:
    model: onnx.ModelProto
    ops: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, recipe: dict[str, Any]) -> None:
        self.r = recipe
        self.opset = recipe["opset"]
        self.rng = np.random.default_rng(recipe["seed"] + 7919)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.pool: list[tuple[str, int, int]] = []  # (name, channels, hw)
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def init(self, arr: np.ndarray, base: str = "w") -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def weight(self, *shape: int) -> str:
        fan = max(1, int(np.prod(shape[1:])))
        return self.init((self.rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32))

    def node(self, op: str, ins: list[str], outs: int = 1, **attrs) -> list[str]:
        names = [self.name(op.lower() + "_") for _ in range(outs)]
        self.nodes.append(helper.make_node(op, ins, names, name=self.name(op), **attrs))
        return names

    def pick(self, i: int) -> tuple[str, int, int]:
        return self.pool[i % len(self.pool)]

    def conv(self, x: str, cin: int, cout: int, k: int, group: int = 1, bias: bool = True) -> str:
        w = self.weight(cout, cin // group, k, k)
        ins = [x, w] + (
            [self.init(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")]
            if bias
            else []
        )
        return self.node("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)[0]

    def const_i64(self, vals) -> str:
        return self.init(np.asarray(vals, dtype=np.int64), "c")


def _step(b: _Builder, s: dict[str, Any]) -> None:
    kind = s["kind"]
    x, c, hw = b.pick(s["a"])
    n = s["n"]
    rng = b.rng
    if kind == "conv":
        k = 3 if s["k"] % 2 else 1
        b.pool.append((b.conv(x, c, 2 * n + 2, k, bias=bool(s["b"] % 3)), 2 * n + 2, hw))
    elif kind == "dwconv":
        m = 1 + s["k"] % 2
        b.pool.append((b.conv(x, c, c * m, 3, group=c), c * m, hw))
    elif kind == "gconv":
        g = 2
        if c % g:
            y = b.conv(x, c, 2 * c, 1)
            c, x = 2 * c, y
        b.pool.append((b.conv(x, c, g * n, 3 if s["k"] % 2 else 1, group=g), g * n, hw))
    elif kind == "bn":
        p = [
            rng.uniform(0.5, 1.5, c),
            rng.uniform(-1, 1, c),
            rng.uniform(-1, 1, c),
            rng.uniform(0.5, 2, c),
        ]
        ins = [x] + [b.init(v.astype(np.float32), "bn") for v in p]
        b.pool.append((b.node("BatchNormalization", ins)[0], c, hw))
    elif kind == "act":
        op = ACTS[s["k"] % len(ACTS)]
        if op == "HardSwish" and b.opset < 14:
            op = "HardSigmoid"
        if op == "Clip":
            if b.opset < 11:
                y = b.node("Clip", [x], min=0.0, max=6.0)[0]
            else:
                y = b.node(
                    "Clip", [x, b.init(np.float32(0.0), "lo"), b.init(np.float32(6.0), "hi")]
                )[0]
        else:
            y = b.node(op, [x])[0]
        b.pool.append((y, c, hw))
    elif kind == "add":
        y, cy, hy = b.pick(s["b"])
        if hy != hw:
            return
        if cy != c:
            y = b.conv(y, cy, c, 1)
        b.pool.append((b.node("Add", [x, y])[0], c, hw))
    elif kind == "concat":
        y, cy, hy = b.pick(s["b"])
        if hy != hw:
            return
        b.pool.append((b.node("Concat", [x, y], axis=1)[0], c + cy, hw))
    elif kind == "split":
        if c < 2:
            return
        first = 1 + s["k"] % (c - 1)
        sizes = [first, c - first]
        if b.opset >= 13:
            outs = b.node("Split", [x, b.const_i64(sizes)], outs=2, axis=1)
        else:
            outs = b.node("Split", [x], outs=2, axis=1, split=sizes)
        b.pool.extend([(outs[0], sizes[0], hw), (outs[1], sizes[1], hw)])
    elif kind == "shuffle":
        if c % 2:
            return
        r1 = b.node("Reshape", [x, b.const_i64([1, 2, c // 2, hw, hw])])[0]
        t = b.node("Transpose", [r1], perm=[0, 2, 1, 3, 4])[0]
        b.pool.append((b.node("Reshape", [t, b.const_i64([1, c, hw, hw])])[0], c, hw))
    elif kind == "se":
        mid = max(1, c // 2)
        g = b.node("GlobalAveragePool", [x])[0]
        h = b.node("Relu", [b.conv(g, c, mid, 1)])[0]
        gate = b.node("HardSigmoid" if s["k"] % 2 else "Sigmoid", [b.conv(h, mid, c, 1)])[0]
        b.pool.append((b.node("Mul", [x, gate])[0], c, hw))
    elif kind in ("chmul", "chadd"):
        v = b.init(rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32), "pc")
        b.pool.append((b.node("Mul" if kind == "chmul" else "Add", [x, v])[0], c, hw))
    elif kind == "pool":
        if hw >= 4 and s["k"] % 2:
            b.pool.append(
                (b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])[0], c, hw // 2)
            )
        else:
            b.pool.append(
                (b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])[0], c, hw)
            )
    elif kind == "inorm":
        ins = [
            x,
            b.init(rng.uniform(0.5, 1.5, c).astype(np.float32), "s"),
            b.init(rng.uniform(-1, 1, c).astype(np.float32), "t"),
        ]
        b.pool.append((b.node("InstanceNormalization", ins)[0], c, hw))
    elif kind == "slice":
        if c < 2:
            return
        lo = s["k"] % (c - 1)
        hi = lo + 1 + s["b"] % (c - lo - 1) if c - lo - 1 > 0 else c
        y = b.node("Slice", [x, b.const_i64([lo]), b.const_i64([hi]), b.const_i64([1])])[0]
        b.pool.append((y, hi - lo, hw))
    elif kind == "convt":
        cout = 2 * n
        w = b.weight(c, cout, 2, 2)
        y = b.node("ConvTranspose", [x, w, b.init(rng.standard_normal(cout).astype(np.float32) * 0.1, "b")],
                   kernel_shape=[2, 2], strides=[2, 2])[0]  # fmt: skip
        b.pool.append((b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])[0], cout, hw))
    elif kind == "resize":
        scales = b.init(np.asarray([1, 1, 2, 2], np.float32), "sc")
        roi = b.init(np.zeros(0, np.float32), "roi")
        y = b.node("Resize", [x, roi, scales], mode="nearest")[0]
        b.pool.append((b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])[0], c, hw))
    elif kind == "pad":
        y = b.node("Pad", [x, b.const_i64([0, 0, 1, 1, 0, 0, 1, 1])])[0]
        b.pool.append((b.node("MaxPool", [y], kernel_shape=[3, 3])[0], c, hw))
    elif kind == "unknown":
        op = NO_RULE[s["k"] % len(NO_RULE)]
        if op == "LpNormalization":
            y = b.node("LpNormalization", [x], axis=1)[0]
        elif op == "CumSum":
            y = b.node("CumSum", [x, b.init(np.asarray(1, np.int64), "ax")])[0]
        else:
            y = b.node(op, [x])[0]
        b.pool.append((y, c, hw))
    else:
        raise ValueError(f"unknown step kind {kind}")


def build(recipe: dict[str, Any]) -> Built:
    b = _Builder(recipe)
    c0, hw = recipe["c0"], recipe["hw"]
    inputs = []
    for i in range(recipe["inputs"]):
        nm = f"input{i}"
        inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, [1, c0, hw, hw]))
    x0 = "input0"
    if recipe["inputs"] > 1:
        x0 = b.node("Add", ["input0", "input1"])[0]
    b.pool.append((b.conv(x0, c0, 8, 3), 8, hw))
    for s in recipe["steps"]:
        _step(b, s)
    x, c, h = b.pool[-1]
    outputs = []
    head = recipe["head"]
    if head == "gemm":
        g = b.node("GlobalAveragePool", [x])[0]
        f = b.node("Flatten", [g])[0]
        y = b.node("Gemm", [f, b.weight(5, c), b.init(np.zeros(5, np.float32), "b")], transB=1)[0]
        outputs.append((y, [1, 5]))
    elif head == "flatten_gemm":
        f = b.node("Flatten", [x])[0]
        y = b.node("Gemm", [f, b.weight(c * h * h, 5)])[0]
        outputs.append((y, [1, 5]))
    else:
        y = b.conv(x, c, 3, 1)
        outputs.append((y, [1, 3, h, h]))
    if recipe["extra_outputs"] and len(b.pool) > 2:
        e, ce, he = b.pool[len(b.pool) // 2]
        if e not in [o for o, _ in outputs]:
            outputs.append((e, [1, ce, he, he]))
    graph = helper.make_graph(
        b.nodes, f"fuzz{recipe['seed']}", inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shp) for o, shp in outputs], b.inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", recipe["opset"])])
    model.ir_version = 8
    return Built(model, [nd.op_type for nd in b.nodes])


# -- properties -----------------------------------------------------------------------------


def check(recipe: dict[str, Any], tmp_dir, ratio: float | None = None) -> dict[str, Any]:
    """Build, prune and assert every property; returns a summary. Raises AssertionError."""
    import onnx_ir as ir

    import spa_nm
    from spa_nm.surgery import check_model
    from spa_nm.testing import assert_prune_equivalent, random_feeds, run

    built = build(recipe)
    onnx.checker.check_model(built.model, full_check=True)
    path = f"{tmp_dir}/fuzz_{recipe['seed']}.onnx"
    onnx.save(built.model, path)
    model = spa_nm.load(path)
    rng = np.random.default_rng(recipe["seed"])
    ratio = float(rng.choice([0.25, 0.5, 0.7])) if ratio is None else ratio
    glob = bool(rng.integers(0, 2))
    round_to = int(rng.choice([1, 1, 2]))
    feeds = random_feeds(model)

    zero = spa_nm.prune(model, 0.0)
    for a, b in zip(run(model, feeds), run(zero.model, feeds), strict=True):
        assert np.array_equal(a, b), "ratio 0 changed the outputs"

    res = spa_nm.prune(model, ratio, global_ranking=glob, round_to=round_to)
    check_model(res.model)
    pm = res.model
    assert [(v.name, v.dtype) for v in pm.graph.inputs] == [
        (v.name, v.dtype) for v in model.graph.inputs
    ]
    assert [(v.name, v.dtype) for v in pm.graph.outputs] == [
        (v.name, v.dtype) for v in model.graph.outputs
    ]
    assert res.report["params_after"] <= res.report["params_before"], "parameters increased"
    # float32 summation order moves the last digits of outputs that reach tens: 1e-6 relative
    assert_prune_equivalent(model, res, atol=1e-5, rtol=1e-6)
    _assert_slices(res)
    if any(op in NO_RULE for op in built.ops):
        reasons = " ".join(b["reason"] for b in res.report["blocked"])
        assert "no rule" in reasons, "an op without a rule was not reported as blocked"
    del ir
    return {"ratio": ratio, "removed": res.report["channels_removed"], "ops": len(built.ops)}


def _assert_slices(res) -> None:
    """Every pruned initializer is the source sliced at the kept indices of its slots."""
    dg, plan = res.graph, res.plan
    if not plan.removed:
        return
    dead_label = np.zeros(dg.labels.size, dtype=bool)
    for units in plan.removed.values():
        dead_label[units] = True
    # biases of consumers that absorbed a removed channel's constant change on purpose
    folded = set()
    for g in dg.groups:
        if g.id in plan.removed:
            for i, _ in g.folds:
                folded |= {v.name for v in dg.view.nodes[i].inputs[2:3] if v is not None}
    src = res.source.graph.initializers
    for name, v in res.model.graph.initializers.items():
        if name not in src or name in folded or v.const_value is None:
            continue
        if not v.const_value.dtype.is_floating_point():
            continue  # shape constants are rewritten, not sliced
        expect = src[name].const_value.numpy()
        for axis in range(expect.ndim):
            from spa_nm.facts import Slot

            s = Slot(name, (axis,))
            if s in dg.offsets:
                o = dg.offsets[s]
                keep = np.nonzero(~dead_label[dg.labels[o : o + dg.sizes[s]]])[0]
                expect = np.take(expect, keep, axis=axis)
        got = v.const_value.numpy()
        assert got.shape == expect.shape and np.array_equal(got, expect), (
            f"{name} is not a slice of the original"
        )


def shrink(recipe: dict[str, Any], fails: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Delete steps (and simplify the frame) while the case still fails."""
    cur = json.loads(json.dumps(recipe))
    changed = True
    while changed:
        changed = False
        for i in range(len(cur["steps"])):
            cand = dict(cur, steps=cur["steps"][:i] + cur["steps"][i + 1 :])
            if fails(cand):
                cur, changed = cand, True
                break
        for key, simpler in (("inputs", 1), ("extra_outputs", 0), ("head", "gemm")):
            if cur[key] != simpler:
                cand = dict(cur, **{key: simpler})
                if fails(cand):
                    cur, changed = cand, True
    return cur
