"""An ONNX graph as a trainable ``torch.nn.Module``: our own interpreter (no onnx2torch).

`to_torch` turns each node into a kernel from the per-op registry (`spa_nm.train.registry`;
families in ``ops_math``, ``ops_nn``, ``ops_tensor``, ``ops_resize``, ``ops_rnn``,
``ops_control``) once, at build time, so an unsupported op or attribute raises
`UnsupportedOpError` before any forward pass (listing every missing op). Model-local functions
are inlined first. The module's forward walks the kernels in graph order over a dict of named
tensors, dropping each intermediate after its last reader; If branches run on a copy of the
enclosing scope.

What the constants become (METHODS.md §2 trains these weights; the roles come from the
registry, see its docstring):

* **parameters**: float initializers and float Constant-node values read as weights (Conv,
  Gemm, MatMul, norms, PRelu, Gather data, recurrent W/R/B) or as multi-element data that is
  not a mask (a mask holds a non-finite value or one of magnitude >= 1e4: the -inf, finfo.min
  or -1e4 of additive attention masks). Scalars read as data (an epsilon, a divisor) are not
  parameters. ``onnx_parameters()`` returns them keyed by their ONNX name;
  ``weight_transforms[name]`` replaces a parameter by ``fn(param)`` in the forward pass (N:M
  masks, mask decay).
* **buffers** (move with ``.to(device)``, saved in ``state_dict``): other float constants,
  BatchNormalization running statistics among them (updated in train mode).
* **host constants** (kept on the CPU, not trainable): integer and bool constants and anything
  read as a shape, axes, pads or scales. With ``Shape`` computed on the CPU too, shape
  arithmetic never waits for an accelerator; tensors on two devices meeting in a data slot are
  moved to the accelerator.

`spa_nm.train.write_back` writes the trained values back into the same ONNX graph.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch  # noqa: TID253 - spa_nm.train.interp is only imported by to_torch
from torch import nn  # noqa: TID253

from spa_nm.errors import UnsupportedModelError
from spa_nm.train import ops_control, ops_math, ops_nn, ops_resize, ops_rnn, ops_tensor  # noqa: F401
from spa_nm.train.ops_common import as_tensor
from spa_nm.train.ops_tensor import constant_value
from spa_nm.train.registry import NodeSpec, UnsupportedOpError, lookup

__all__ = ["OnnxModule", "to_torch"]

_FLOAT_KINDS = ("f",)


@dataclass(frozen=True, slots=True)
class _Step:
    kernel: Callable[..., Any]
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    data_slots: tuple[int, ...]
    free: tuple[str, ...]
    node: str
    op_type: str
    scoped: bool


@dataclass(frozen=True, slots=True)
class _Program:
    """A graph's kernels in order and the names of its outputs."""

    steps: tuple[_Step, ...]
    outputs: tuple[str, ...]


def _run(rt: OnnxModule, program: _Program, env: dict[str, torch.Tensor]) -> tuple:
    """Run ``program`` over ``env`` (names -> tensors; values are added and freed in place)."""
    for step in program.steps:
        xs = [None if n is None else env[n] for n in step.inputs]
        if len(step.data_slots) > 1:
            _align(xs, step.data_slots)
        try:
            out = step.kernel(rt, env, *xs) if step.scoped else step.kernel(rt, *xs)
        except Exception as e:
            raise RuntimeError(f"{rt.source}: node {step.node} ({step.op_type}) failed: {e}") from e
        if isinstance(out, torch.Tensor):
            env[step.outputs[0]] = out
        else:
            for name, t in zip(step.outputs, out, strict=False):
                if name:
                    env[name] = t
        for name in step.free:
            env.pop(name, None)
    return tuple(env[n] for n in program.outputs)


def _is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind in _FLOAT_KINDS or arr.dtype.name == "bfloat16"


def _as_ir(model: ir.Model | onnx.ModelProto) -> ir.Model:
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(_sorted_proto(model))
    if isinstance(model, ir.Model):
        return model
    raise TypeError(f"expected an onnx_ir Model or onnx.ModelProto, got {type(model).__name__}")


def _sorted_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The proto itself when its top-level nodes are in topological order, else a sorted copy
    (onnx-ir links a value read before its producer to a dangling placeholder)."""
    nodes = list(proto.graph.node)
    order = _order(nodes, lambda n: [i for i in n.input if i], lambda n: [o for o in n.output if o])
    if order is None or order == list(range(len(nodes))):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in order)
    return out


def _order(nodes, inputs_of, outputs_of) -> list[int] | None:
    """Indices of ``nodes`` in an order where each reads only names produced before it (stable:
    a sorted list keeps its order); None when a cycle leaves nodes unordered."""
    produced = {name for n in nodes for name in outputs_of(n)}
    avail: set[str] = set()
    pending, order = list(range(len(nodes))), []
    while pending:
        rest = []
        for i in pending:
            if all(x in avail or x not in produced for x in inputs_of(nodes[i])):
                order.append(i)
                avail.update(outputs_of(nodes[i]))
            else:
                rest.append(i)
        if len(rest) == len(pending):
            return None
        pending = rest
    return order


def _prepared(model: ir.Model) -> ir.Model:
    """Model-local functions inlined (on a copy)."""
    if model.functions:
        from onnx_ir.passes.common import InlinePass

        model = model.clone()
        InlinePass()(model)
    return model


def _safe_names(names: list[str], prefix: str) -> dict[str, str]:
    """ONNX names -> unique attribute names torch accepts (no dots)."""
    out, taken = {}, set()
    for n in names:
        base = prefix + re.sub(r"\W", "_", n)
        key, k = base, 1
        while key in taken:
            k += 1
            key = f"{base}_{k}"
        taken.add(key)
        out[n] = key
    return out


class OnnxModule(nn.Module):
    """A torch module that runs an ONNX graph; build it with `to_torch`.

    ``forward(*inputs, **named)`` takes tensors in graph-input order (or by ONNX input name) and
    returns a tuple in graph-output order.
    """

    def __init__(
        self,
        program: _Program,
        input_names: list[str],
        params: dict[str, np.ndarray],
        buffers: dict[str, np.ndarray],
        host: dict[str, np.ndarray],
        source: str,
    ) -> None:
        super().__init__()
        self.source = source
        self.input_names = list(input_names)
        self.output_names = list(program.outputs)
        self._program = program
        self._param_keys = _safe_names(list(params), "p_")
        self._buffer_keys = _safe_names(list(buffers), "b_")
        for name, arr in params.items():
            self.register_parameter(self._param_keys[name], nn.Parameter(as_tensor(arr)))
        for name, arr in buffers.items():
            self.register_buffer(self._buffer_keys[name], as_tensor(arr))
        self._host = {name: as_tensor(arr) for name, arr in host.items()}
        self.weight_transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable float initializers (and Constant-held weights) keyed by ONNX name."""
        return {name: getattr(self, key) for name, key in self._param_keys.items()}

    def onnx_buffers(self) -> dict[str, torch.Tensor]:
        """Non-trainable float constants (BatchNormalization running stats, ...) by ONNX name."""
        return {name: getattr(self, key) for name, key in self._buffer_keys.items()}

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, nodes={len(self._program.steps)}, inputs={self.input_names}, "
            f"outputs={self.output_names}"
        )

    def _feeds(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        if len(args) > len(self.input_names):
            raise TypeError(
                f"{self.source}: {len(args)} inputs given, the graph takes {len(self.input_names)}"
            )
        feeds = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise TypeError(f"{self.source}: no graph input named {k!r}")
            if k in feeds:
                raise TypeError(f"{self.source}: input {k!r} given twice")
            feeds[k] = v
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TypeError(f"{self.source}: missing graph inputs {missing}")
        return {
            k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
            for k, v in feeds.items()
        }

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = dict(self._host)
        tf = self.weight_transforms
        if tf and not tf.keys() <= self._param_keys.keys():
            unknown = sorted(set(tf) - set(self._param_keys))[:3]
            raise KeyError(f"{self.source}: weight_transforms for non-parameters {unknown}")
        for name, key in self._param_keys.items():
            p = getattr(self, key)
            env[name] = tf[name](p) if name in tf else p
        for name, key in self._buffer_keys.items():
            env[name] = getattr(self, key)
        env.update(self._feeds(args, kwargs))
        return _run(self, self._program, env)


def _align(xs: list, slots: tuple[int, ...]) -> None:
    """Move CPU tensors of data slots to the accelerator another data slot is on."""
    dev = None
    for i in slots:
        t = xs[i] if i < len(xs) else None
        if t is not None and t.device.type != "cpu":
            dev = t.device
            break
    if dev is None:
        return
    for i in slots:
        t = xs[i] if i < len(xs) else None
        if t is not None and t.device != dev:
            xs[i] = t.to(dev)


def to_torch(model: ir.Model | onnx.ModelProto, *, name: str | None = None) -> OnnxModule:
    """Build a trainable torch module that computes ``model``'s graph.

    ``name`` labels error messages (default: the graph's name). The input model is not
    modified. Raises `UnsupportedOpError` for a node without a torch kernel (custom domains,
    unimplemented modes), naming the op, its opset and the node (and the other missing ops).
    """
    src = _as_ir(model)
    where = name or src.graph.name or "<model>"
    writable = _writable(src)
    m = _prepared(src)
    g = m.graph
    opsets = {("" if k == "ai.onnx" else k): v for k, v in m.opset_imports.items()}
    builder = _Builder(where, opsets)
    program = builder.program(g)
    if builder.missing:
        first = builder.missing[0]
        others = sorted({spec.label for spec in builder.missing} - {first.label})
        err = first.unsupported()
        raise UnsupportedOpError(
            f"{err}; also missing: {', '.join(others)}" if others else str(err)
        )
    params, buffers, host = _classify(builder.consts, builder.roles, writable)
    inputs = [v.name for v in g.inputs if v.name not in g.initializers]
    return OnnxModule(program, inputs, params, buffers, host, where)


def _writable(model: ir.Model) -> set[str]:
    """Names write_back can update: initializers (of every graph scope) and Constant nodes."""
    names = set(model.graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            names.add(node.outputs[0].name)
        for g in _graphs(node):
            names.update(g.initializers)
    return names


def _graphs(node: ir.Node) -> list[ir.Graph]:
    out: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            out.append(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            out.extend(attr.value)
    return out


def _captured(node: ir.Node) -> set[str]:
    """Outer-scope names the node's subgraphs read."""
    out: set[str] = set()
    for g in _graphs(node):
        local = {v.name for v in g.inputs} | set(g.initializers)
        inner = list(ir.traversal.RecursiveGraphIterator(g))
        for n in inner:
            local.update(v.name for v in n.outputs)
            for sub in _graphs(n):
                local.update(v.name for v in sub.inputs)
                local.update(sub.initializers)
        for n in inner:
            out.update(v.name for v in n.inputs if v is not None and v.name not in local)
        out.update(v.name for v in g.outputs if v.name not in local)
    return out


class _Builder:
    """Turns a graph (and, recursively, its subgraphs) into a `_Program`, collecting every
    constant, the roles its readers give it, and the nodes without a kernel."""

    def __init__(self, where: str, opsets: dict[str, int]) -> None:
        self.where = where
        self.opsets = opsets
        self.consts: dict[str, np.ndarray] = {}
        self.roles: dict[str, set[str]] = {}
        self.missing: list[NodeSpec] = []

    def program(self, graph: ir.Graph) -> _Program:
        for vname, v in graph.initializers.items():
            if v.const_value is not None:
                self.consts[vname] = np.asarray(v.const_value.numpy())
        nodes = []
        listed = list(graph)
        order = _order(
            listed,
            lambda n: [v.name for v in n.inputs if v is not None] + sorted(_captured(n)),
            lambda n: [v.name for v in n.outputs if v.name],
        )
        if order is None:
            raise UnsupportedModelError(f"{self.where}: graph {graph.name!r} has a cycle")
        for node in (listed[i] for i in order):
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            opset = self.opsets.get(domain, 1)
            spec = NodeSpec(node, opset, self.where, self.consts, self.subprogram)
            if node.op_type == "Constant" and domain == "":
                self.consts[node.outputs[0].name] = constant_value(spec)
                continue
            entry = lookup(domain, node.op_type, opset)
            if entry is None:
                self.missing.append(spec)
                continue
            for i, v in enumerate(node.inputs):
                if v is not None and v.name in self.consts:
                    self.roles.setdefault(v.name, set()).add(entry.role(i))
            nodes.append((node, entry, spec))
        outputs = tuple(v.name for v in graph.outputs)
        return _Program(tuple(self._steps(nodes, set(outputs))), outputs)

    def subprogram(self, graph: ir.Graph):
        """``run(rt, env)`` for a subgraph: its own scope starts as a copy of ``env``."""
        prog = self.program(graph)

        def run(rt, env):
            return _run(rt, prog, dict(env))

        return run

    def _steps(self, nodes, graph_outputs: set[str]) -> list[_Step]:
        last_use: dict[str, int] = {}
        for k, (node, _, _) in enumerate(nodes):
            for v in node.inputs:
                if v is not None:
                    last_use[v.name] = k
            for vname in _captured(node):
                last_use[vname] = k
        free: dict[int, list[str]] = {}
        for vname, k in last_use.items():
            if vname not in graph_outputs:
                free.setdefault(k, []).append(vname)
        steps = []
        for k, (node, entry, spec) in enumerate(nodes):
            ins = tuple(None if v is None else v.name for v in node.inputs)
            steps.append(
                _Step(
                    entry.build(spec),
                    ins,
                    tuple(v.name for v in node.outputs),
                    tuple(i for i in range(len(ins)) if entry.role(i) != "config"),
                    tuple(free.get(k, ())),
                    spec.name,
                    node.op_type,
                    entry.scoped,
                )
            )
        return steps


# additive attention masks hold -inf, finfo.min or -1e4..-1e9; learned weights never get there
_MASK_MAGNITUDE = 1e4


def _is_mask(arr: np.ndarray) -> bool:
    """A float constant that is a mask or sentinel, not a weight: non-finite or huge values."""
    a = np.abs(arr.astype(np.float64))
    return bool(not np.isfinite(a).all() or (a >= _MASK_MAGNITUDE).any())


def _classify(
    consts: dict[str, np.ndarray], roles: dict[str, set[str]], writable: set[str]
) -> tuple[dict, dict, dict]:
    """Split constants into parameters, buffers and host constants (see the module doc)."""
    params, buffers, host = {}, {}, {}
    for name, arr in consts.items():
        r = roles.get(name, set())
        is_float = _is_float(arr)
        trainable = (
            is_float
            and name in writable
            and bool(r)
            and not r & {"config", "fixed"}
            and ("weight" in r or (arr.size > 1 and not _is_mask(arr)))
        )
        if trainable:
            params[name] = arr
        elif is_float and "config" not in r:
            buffers[name] = arr
        else:
            host[name] = arr
    return params, buffers, host


__all__ += ["UnsupportedOpError"]
