"""Name-indexed, read-only access to a model's main graph: shapes, constants (initializers,
Constant nodes, folded shape arithmetic), producers and consumers, in topological order."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm import limits
from spa_nm.passes import slice_ints
from spa_nm.rules import lookup

__all__ = ["ModelView", "node_label"]


def node_label(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


class ModelView:
    """Name-indexed, read-only access to the main graph of an onnx-ir model."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        g = model.graph
        self.nodes: list[ir.Node] = _topo_sorted(g)
        self.values: dict[str, ir.Value] = {}
        for v in g.inputs:
            self.values[v.name] = v
        for name, v in g.initializers.items():
            self.values[name] = v
        for node in self.nodes:
            for v in node.inputs:
                if v is not None and v.name:
                    self.values.setdefault(v.name, v)
            for v in node.outputs:
                if v.name:
                    self.values[v.name] = v
        self.graph_inputs = {v.name for v in g.inputs}
        self.graph_outputs = {v.name for v in g.outputs}
        self._consts: dict[str, np.ndarray | None] = {}
        self._derived: dict[str, Any] = {}
        self._opsets = dict(model.opset_imports)
        # How rules collapse a channel axis split into (heads, head_dim) where the two parts
        # part ways (a Transpose that separates them, a batched MatMul): "heads" keeps the outer
        # factor (whole heads), "head_dim" the inner one (the same indices in every head).
        self.attention = "heads"

    def opset_of(self, domain: str) -> int:
        d = "" if domain in ("", "ai.onnx") else domain
        return int(self._opsets.get(d, self._opsets.get("ai.onnx", 1)))

    def shape(self, name: str) -> tuple[Any, ...] | None:
        v = self.values.get(name)
        if v is None:
            return None
        if v.const_value is not None:
            return tuple(int(d) for d in v.const_value.shape)
        c = self.const(name)
        if c is not None:
            return tuple(c.shape)
        if v.shape is None:
            return None
        # a negative dim (paddle2onnx writes -1 for "any") is as unknown as a symbol
        return tuple(
            (d if d >= 0 else None) if isinstance(d, int) else (d.value if d is not None else None)
            for d in v.shape
        )

    def const(self, name: str) -> np.ndarray | None:
        if name in self._consts:
            return self._consts[name]
        v = self.values.get(name)
        arr = None
        # an initializer listed as a graph input (every weight of an IR < 4 model) is a default
        # value: it is read as a constant, and keeps its place in the inputs with its new shape
        if v is not None and (v.const_value is not None or not v.is_graph_input()):
            if v.const_value is not None:
                arr = v.const_value.numpy()
            else:
                p = v.producer()
                if p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
                    arr = _constant_node_value(p)
                elif (d := self.derived(name)) is not None:
                    arr = d.value
        self._consts[name] = arr
        return arr

    def derived(self, name: str):
        """The `Derived` constant ``name`` (a dequantized weight), or None: asked of the rule of
        its producer, so no op knowledge lives here."""
        if name in self._derived:
            return self._derived[name]
        self._derived[name] = None  # guards against cycles
        v = self.values.get(name)
        p = None if v is None or v.const_value is not None else v.producer()
        d = None
        if p is not None and not v.is_graph_output():
            entry = lookup(p.domain, p.op_type, self.opset_of(p.domain))
            if entry is not None and entry.derived is not None:
                try:
                    d = entry.derived(p, self)
                except Exception:  # a malformed node is not a constant
                    d = None
        self._derived[name] = d
        return d

    def partial_ints(self, name: str, depth: int = 0) -> list[int | None] | None:
        """A 1-D integer value whose entries are partly known: shape arithmetic over a tensor
        with symbolic dims (Shape, Gather, Unsqueeze, Squeeze, Concat, Cast). None: unknown."""
        c = self.const(name)
        if c is not None:
            small = c.dtype.kind in "iu" and c.ndim <= 1 and c.size <= limits.SHAPE_DATA_ELEMENTS
            return [int(v) for v in np.asarray(c).reshape(-1)] if small else None
        v = self.values.get(name)
        p = None if v is None else v.producer()
        if p is None or depth > 16 or p.domain not in ("", "ai.onnx"):
            return None
        ins = [i.name if i is not None else None for i in p.inputs]
        if p.op_type == "Shape":
            shape = self.shape(ins[0])
            if shape is None:
                return None
            dims = [d if isinstance(d, int) else None for d in shape]
            r = len(dims)
            a = p.attributes.get("start")
            b = p.attributes.get("end")
            s0 = 0 if a is None else int(a.value)
            e0 = r if b is None else int(b.value)
            return dims[max(0, s0 + r if s0 < 0 else s0) : max(0, e0 + r if e0 < 0 else e0)]
        if p.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            return self.partial_ints(ins[0], depth + 1)
        if p.op_type == "Slice":
            data = self.partial_ints(ins[0], depth + 1)
            return None if data is None else slice_ints(p, data, lambda v: self.const(v.name))
        if p.op_type == "Concat":
            parts = [self.partial_ints(n, depth + 1) for n in ins if n]
            return None if any(q is None for q in parts) else [x for q in parts for x in q]
        if p.op_type == "Gather":
            data, idx = self.partial_ints(ins[0], depth + 1), self.const(ins[1])
            if data is None or idx is None or np.asarray(idx).size > limits.SHAPE_DATA_ELEMENTS:
                return None
            picked = [int(i) for i in np.asarray(idx).reshape(-1)]
            if any(not -len(data) <= i < len(data) for i in picked):
                return None  # an index the op would refuse
            return [data[i] for i in picked]
        if p.op_type == "Reshape":
            # a 1-D shape vector reshaped to 1-D ([-1] or [n]) keeps its entries
            target = self.const(ins[1]) if len(ins) > 1 and ins[1] else None
            if target is None or np.asarray(target).size != 1:
                return None
            return self.partial_ints(ins[0], depth + 1)
        if p.op_type == "Where" and len(ins) == 3 and all(ins):
            return self._partial_where(ins, depth)
        if p.op_type in ("Mul", "Add") and len(ins) == 2 and all(ins):
            # T * B written from two shape entries (an RNN's view(T * B, C)): dims in, a dim
            # out, known where both are
            a, b = self.partial_ints(ins[0], depth + 1), self.partial_ints(ins[1], depth + 1)
            if a is None or b is None or (len(a) not in (1, len(b)) and len(b) not in (1, len(a))):
                return None
            if any(v is not None and v < 0 for v in (*a, *b)):
                return None
            n = max(len(a), len(b))
            a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
            op = (lambda u, v: u * v) if p.op_type == "Mul" else (lambda u, v: u + v)
            return [None if u is None or v is None else op(u, v) for u, v in zip(a, b, strict=True)]
        return None

    def _partial_where(self, ins: list[str], depth: int) -> list[int | None] | None:
        """``Where(Equal(t, c), a, b)`` entry by entry: the torch exporter's guard that turns
        the -1 entries of an Expand target into 1. An unknown entry of ``t`` is a dimension
        (never negative), so it never equals a negative ``c``."""
        cond = self.values.get(ins[0])
        eq = None if cond is None else cond.producer()
        a, b = self.partial_ints(ins[1], depth + 1), self.partial_ints(ins[2], depth + 1)
        if eq is None or eq.op_type != "Equal" or a is None or b is None or len(a) != len(b):
            return None
        ops = [None if i is None else self.partial_ints(i.name, depth + 1) for i in eq.inputs]
        if len(ops) != 2 or any(o is None or len(o) not in (1, len(a)) for o in ops):
            return None
        lhs, rhs = ([o[0]] * len(a) if len(o) == 1 else o for o in ops)
        out: list[int | None] = []
        for t, c, x, y in zip(lhs, rhs, a, b, strict=True):
            if t is not None and c is not None:
                out.append(x if t == c else y)
            elif (t is None and c is not None and c < 0) or (c is None and t is not None and t < 0):
                out.append(y)
            elif x == y:
                out.append(x)
            else:
                return None
        return out

    def is_param(self, name: str) -> bool:
        v = self.values.get(name)
        return v is not None and not v.is_graph_output() and self.const(name) is not None

    def consumers(self, name: str) -> list[ir.Node]:
        v = self.values.get(name)
        return [] if v is None else list(v.consumers())


def _constant_node_value(node: ir.Node) -> np.ndarray | None:
    for key, attr in node.attributes.items():
        val = attr.value
        if key == "value":
            return val.numpy()
        if key in ("value_float", "value_int"):
            return np.asarray(val, dtype=np.float32 if key == "value_float" else np.int64)
        if key in ("value_floats", "value_ints"):
            return np.asarray(list(val), dtype=np.float32 if key == "value_floats" else np.int64)
    return None


def _topo_sorted(g: ir.Graph) -> list[ir.Node]:
    nodes = list(g)
    produced_by = {}
    for i, n in enumerate(nodes):
        for v in n.outputs:
            produced_by[id(v)] = i
    indeg = [0] * len(nodes)
    users = defaultdict(list)
    for i, n in enumerate(nodes):
        for v in n.inputs:
            if v is not None and id(v) in produced_by:
                indeg[i] += 1
                users[produced_by[id(v)]].append(i)
    ready = [i for i in range(len(nodes)) if indeg[i] == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in users[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        return nodes
    return [nodes[i] for i in order]


def attr_value(node: ir.Node, key: str, default: Any) -> Any:
    """Attribute ``key`` of ``node`` (strings decoded), or ``default`` when absent."""
    a = node.attributes.get(key)
    if a is None:
        return default
    v = a.value
    return v.decode() if isinstance(v, bytes) else v
