"""Graph clean-ups that pruning needs: fold static shape arithmetic, drop dead nodes.

Exporters often compute sizes at run time (``Shape -> Gather -> Div -> Slice`` for
``torch.chunk``). Where the shapes involved are static, the result is a constant; folding it
lets rules read (and surgery rewrite) the bound instead of blocking. Dims that are symbolic
(a dynamic batch) stay computed.
"""

from __future__ import annotations

import collections
import logging
import math

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir

from spa_nm import limits

__all__ = [
    "add_initializer",
    "fold_shape_arithmetic",
    "inline_constant_ifs",
    "remove_dead_nodes",
    "slice_ints",
    "split_shared_fills",
    "unmerge_transposes",
]

log = logging.getLogger(__name__)

# Ops that only do arithmetic on shapes and indices (deterministic, cheap).
_FOLDABLE = {
    "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Add", "Sub", "Mul",
    "Div", "Cast", "Reshape", "Identity", "ConstantOfShape", "Range", "Equal", "Where", "Neg",
    "Floor", "Ceil", "Sqrt", "Max", "Min", "ReduceProd", "Expand", "Abs", "Mod", "Constant",
    "Less", "Greater", "Not", "And", "Or", "Sign", "Tile", "Transpose", "Flatten", "GatherElements",
    "ReduceSum", "ReduceMax", "ReduceMin", "NonZero", "Pow", "Clip",
    # rotary tables: cos/sin of (inverse frequencies x positions), constant for static shapes
    "MatMul", "Cos", "Sin",
}  # fmt: skip
_MAX_ELEMENTS = limits.SHAPE_DATA_ELEMENTS  # a folded shape-arithmetic value; fills: limits.fold_limit()


def _const_of(v: ir.Value, known: dict[str, np.ndarray]) -> np.ndarray | None:
    if v.name in known:
        return known[v.name]
    if v.const_value is not None:  # an initializer (also when listed as an IR < 4 input)
        if v.const_value.size <= _MAX_ELEMENTS:
            arr = v.const_value.numpy()
            known[v.name] = arr
            return arr
    return None


def fold_shape_arithmetic(model: ir.Model) -> int:
    """Replace the outputs of shape arithmetic on static shapes by initializers; returns the
    number of values folded."""
    g = model.graph
    known: dict[str, np.ndarray] = {}
    partial: dict[str, list[int | None]] = {}  # Shape outputs with symbolic entries
    partial_flags: dict[str, list[bool | None]] = {}  # Equal on them: None where unknown
    opset = dict(model.opset_imports).get("", 13)
    limit, total = limits.fold_limit(), limits.fold_total()
    spent = 0  # bytes of the fills folded so far
    folded = 0
    for node in list(g):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE:
            continue
        if any(o.is_graph_output() for o in node.outputs) or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        src = node.inputs[0] if node.inputs else None
        if (
            node.op_type == "Identity"
            and src is not None
            and src.const_value is not None
        ):
            # exporters deduplicate equal weights through Identity. Two layers' weights are
            # equal by value only when they are uniform (ones, zeros: fresh norms and biases):
            # give each its own initializer (same tensor object, no copy) so they prune
            # independently. A non-uniform tensor read through Identities is one parameter
            # used many times (an RNN cell unrolled over time): its readers share it, so
            # every reader keeps the same slice of it
            if _is_uniform(src.const_value):
                _replace_with_initializer(model, out, src.const_value)
            else:
                out.replace_all_uses_with(src)
            folded += 1
            continue
        if node.op_type == "ConstantOfShape" and src is not None and _const_of(src, known) is not None:
            # a tensor filled with one value (some converters build weights this way): fold
            # it up to the fold limit (limits.fold_limit; the model's fills together up to
            # limits.fold_total), sharing no memory with anything else; a bigger one stays a
            # node, and what reads it stays unfolded
            shape = [int(d) for d in _const_of(src, known).reshape(-1)]
            attr = node.attributes.get("value")
            fill = attr.value.numpy().reshape(-1) if attr is not None else np.zeros(1, np.float32)
            n = limits.numel(shape)
            size = None if n is None or fill.size != 1 else n * fill.dtype.itemsize
            if size is None or size > min(limit, total - spent):
                if size is not None:
                    log.info(
                        "%s: not folded: ConstantOfShape of %s elements (%s) is over the fold limit",
                        node.name or out.name, limits.show_count(n), limits.show_bytes(size),
                    )
                continue
            spent += size
            _replace_with_initializer(model, out, np.full(shape, fill[0], dtype=fill.dtype))
            folded += 1
            continue
        if node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity") and src is not None and src.name in partial:
            partial[out.name] = partial[src.name]
            continue
        if (
            node.op_type == "Concat"
            and any(v is not None and v.name in partial for v in node.inputs)
            and all(v is not None and (v.name in partial or _const_of(v, known) is not None) for v in node.inputs)
        ):
            parts = [partial[v.name] if v.name in partial else [int(x) for x in _const_of(v, known).reshape(-1)] for v in node.inputs]
            partial[out.name] = [x for q in parts for x in q]
            continue
        if node.op_type == "Reshape" and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name in partial:
            folded += _refine_reshape(model, node, partial[node.inputs[1].name])
            continue
        if node.op_type == "Reshape" and src is not None and src.name in partial:
            # a partly symbolic shape vector reshaped to 1-D (the exporter's Expand -1 guard)
            t = _const_of(node.inputs[1], known) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if t is not None and t.size == 1 and int(t.reshape(-1)[0]) in (-1, len(partial[src.name])):
                partial[out.name] = partial[src.name]
            continue
        if node.op_type == "Equal" and any(v is not None and v.name in partial for v in node.inputs):
            flags = _partial_equal(node, partial, known)
            if flags is not None:
                partial_flags[out.name] = flags
            continue
        if node.op_type == "Where" and node.inputs[0] is not None and node.inputs[0].name in partial_flags:
            folded += _settle(model, out, _partial_where(node, partial, partial_flags, known), known, partial)
            continue
        if node.op_type == "Expand" and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name in partial:
            folded += _refine_expand(node, partial[node.inputs[1].name])
            continue
        if node.op_type == "Slice" and src is not None and src.name in partial:
            # x.shape[:-1] written as Shape -> Slice: the picked entries stay partly known
            picked = slice_ints(node, partial[src.name], lambda v: _const_of(v, known))
            folded += _settle(model, out, picked, known, partial)
            continue
        if node.op_type == "Gather" and src is not None and src.name in partial:
            # Gather(shape(x), const) picks static dims of a partly symbolic shape
            idx = _const_of(node.inputs[1], known) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            axis = node.attributes.get("axis")
            vals = partial[src.name]
            if idx is not None and (axis is None or int(axis.value) == 0):
                picked = [vals[int(i)] for i in np.asarray(idx).reshape(-1) if -len(vals) <= int(i) < len(vals)]
                if len(picked) == np.asarray(idx).size and not all(isinstance(v, int) for v in picked):
                    if len(picked) == np.asarray(idx).size and all(v is not None for v in picked):
                        partial[out.name] = picked  # symbolic entries travel on
                    continue
                if len(picked) == np.asarray(idx).size:
                    arr = np.asarray(picked, dtype=np.int64).reshape(np.asarray(idx).shape)
                    known[out.name] = arr
                    _replace_with_initializer(model, out, arr)
                    folded += 1
            continue
        if node.op_type == "Shape":
            arr = _static_shape(node)
            if arr is None:
                dims = _partial_shape(node)
                if dims is not None:
                    partial[out.name] = dims
        elif node.op_type == "Size":
            s = _static_shape(node)
            n = None if s is None else limits.numel(s.tolist())
            arr = None if n is None or n > limits.INT64_MAX else np.asarray(n, dtype=np.int64)
        else:
            inputs = [None if v is None else _const_of(v, known) for v in node.inputs]
            if any(v is not None and a is None for v, a in zip(node.inputs, inputs, strict=True)):
                continue
            # sized before it is computed: a Range to 10^9 or an Expand to [10^5, 10^5] of
            # small constants is never materialized (a result this large is not kept anyway)
            n = _fold_size(node, inputs)
            if n is None or n > _MAX_ELEMENTS:
                continue
            arr = _evaluate(node, inputs, opset)
        if arr is None or arr.size > _MAX_ELEMENTS:
            continue
        known[out.name] = arr
        if node.op_type == "Constant":
            continue
        _replace_with_initializer(model, out, arr)
        folded += 1
    if folded:
        remove_dead_nodes(model)
    return folded


def slice_ints(node: ir.Node, vals: list, const) -> list | None:
    """``Slice`` of the 1-D list ``vals`` (entries may be symbols) with constant bounds and a
    positive step, or None. ``const(value)`` returns a value's constant array or None."""
    if node.op_type != "Slice":
        return None
    try:
        if len(node.inputs) >= 3:  # opset 10+: bounds are inputs
            bounds = [None if v is None or not v.name else const(v) for v in node.inputs[1:5]]
            if bounds[0] is None or bounds[1] is None:
                return None
            starts, ends = bounds[0], bounds[1]
            axes = bounds[2] if len(bounds) > 2 and bounds[2] is not None else [0]
            steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else [1]
        else:
            starts, ends = node.attributes["starts"].value, node.attributes["ends"].value
            axes = node.attributes["axes"].value if "axes" in node.attributes else [0]
            steps = [1]
        starts, ends, axes, steps = (np.asarray(a).reshape(-1).tolist() for a in (starts, ends, axes, steps))
    except (KeyError, AttributeError, TypeError):
        return None
    if len(starts) != 1 or len(ends) != 1 or [int(a) for a in axes] not in ([0], [-1]) or int(steps[0]) < 1:
        return None
    n = len(vals)
    start, end = int(starts[0]), int(ends[0])
    start = min(max(start + n if start < 0 else start, 0), n)
    end = min(max(end + n if end < 0 else end, 0), n)
    return list(vals[start:end:int(steps[0])])


def unmerge_transposes(model: ir.Model) -> int:
    """``Reshape(x, [-1, *tail]) -> Transpose(perm, perm[0] = 0) -> Reshape(back to x's
    leading dims)`` becomes one Transpose of ``x``: the dynamo exporter writes a batched
    transpose of ``[B, H, T, d]`` that way, and with a symbolic batch the merged ``B*H`` axis
    would hide the heads. Exact (the same elements in the same order). Returns the count."""
    done = 0
    for r2 in list(model.graph):
        if r2.op_type != "Reshape" or r2.domain not in ("", "ai.onnx"):
            continue
        t = r2.inputs[0].producer() if r2.inputs[0] is not None else None
        if t is None or t.op_type != "Transpose" or len(t.outputs[0].uses()) != 1:
            continue
        r1 = t.inputs[0].producer()
        if r1 is None or r1.op_type != "Reshape" or len(r1.outputs[0].uses()) != 1:
            continue
        x, merged, out = r1.inputs[0], r1.outputs[0], r2.outputs[0]
        shapes = [v.shape for v in (x, merged, t.outputs[0], out)]
        if any(s is None for s in shapes) or out.is_graph_output():
            continue
        xs, ms, ts, os_ = ([d if isinstance(d, int) else getattr(d, "value", None) for d in s] for s in shapes)
        perm = [int(p) for p in t.attributes["perm"].value] if "perm" in t.attributes else None
        k = len(xs) - len(ms) + 1  # leading dims merged into one
        if perm is None or perm[0] != 0 or k < 2 or len(os_) != len(xs):
            continue
        tail = xs[k:]
        if ms[1:] != tail or any(d is None for d in tail):
            continue
        if os_[:k] != xs[:k] or any(d is None for d in xs[:k]) or os_[k:] != ts[1:]:
            continue
        new = ir.Node("", "Transpose", [x], attributes=[ir.AttrInt64s("perm", list(range(k)) + [p + k - 1 for p in perm[1:]])],
                      name=f"{t.name or 'Transpose'}_unmerged")  # fmt: skip
        new.outputs[0].shape = out.shape
        new.outputs[0].type = out.type
        model.graph.insert_after(r2, new)
        name = out.name
        out.replace_all_uses_with(new.outputs[0])
        out.name = f"{name}__merged"
        new.outputs[0].name = name
        done += 1
    if done:
        remove_dead_nodes(model)
    return done


def _static_shape(node: ir.Node) -> np.ndarray | None:
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return None
    dims = list(x.shape)
    if node.op_type == "Shape":
        r = len(dims)
        start = node.attributes.get("start")
        end = node.attributes.get("end")
        s = 0 if start is None else int(start.value)
        e = r if end is None else int(end.value)
        s = max(0, min(r, s + r if s < 0 else s))
        e = max(0, min(r, e + r if e < 0 else e))
        dims = dims[s:e]
    return np.asarray(dims, dtype=np.int64)


def _refine_reshape(model: ir.Model, node: ir.Node, target: list) -> int:
    """A Reshape whose run-time target holds ints and the input's own symbols at their own
    positions (``x.view(x.size(0), g, c // g, h, w)`` with a dynamic batch) gets the constant
    target ONNX spells with 0 ("copy this input dim"), which is exact; one with a -1 whose
    symbols cancel (``x.view(x.size(0), -1)``) gets its output shape. Returns 1 when it did."""
    x, out = node.inputs[0], node.outputs[0]
    if x is None or x.shape is None or any(t is None for t in target):
        return 0
    dims_now = [d if isinstance(d, int) else (d.value if d is not None else None) for d in x.shape]
    allow = node.attributes.get("allowzero")
    if not (allow and int(allow.value)) and all(
        isinstance(t, int) or (k < len(dims_now) and dims_now[k] == t) for k, t in enumerate(target)
    ):
        const = np.asarray([t if isinstance(t, int) else 0 for t in target], dtype=np.int64)
        name = f"{node.inputs[1].name}__static"
        k = 0
        while name in model.graph.initializers:
            k += 1
            name = f"{node.inputs[1].name}__static{k}"
        nv = ir.Value(name=name, shape=ir.Shape(const.shape), type=ir.TensorType(ir.DataType.INT64))
        nv.const_value = ir.tensor(const, name=name)
        add_initializer(model, nv)
        node.replace_input_with(1, nv)
        return 1
    if out.shape is not None and all(isinstance(d, int) for d in out.shape):
        return 0
    dims_in = [d if isinstance(d, int) else (d.value if d is not None else None) for d in x.shape]
    if any(d is None for d in dims_in):
        return 0
    allowzero = node.attributes.get("allowzero")
    dims = []
    for k, t in enumerate(target):
        if isinstance(t, int) and t == 0 and not (allowzero and int(allowzero.value)):
            t = dims_in[k] if k < len(dims_in) else None
        dims.append(t)
    if dims.count(-1) > 1 or any(t is None for t in dims):
        return 0
    if -1 in dims:
        sym_in = collections.Counter(d for d in dims_in if isinstance(d, str))
        sym_out = collections.Counter(d for d in dims if isinstance(d, str))
        if sym_in != sym_out:
            return 0  # the symbols do not cancel: the -1 is not a static number
        known_in = math.prod(d for d in dims_in if isinstance(d, int))
        known_out = math.prod(d for d in dims if isinstance(d, int) and d != -1)
        if known_out == 0 or known_in % known_out:
            return 0
        dims[dims.index(-1)] = known_in // known_out
    out.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims])
    return 1


def _settle(model: ir.Model, out: ir.Value, picked: list | None, known: dict, partial: dict) -> int:
    """A shape vector worked out entry by entry: a constant when every entry is known (returns
    1, folded), else it travels on as partly known."""
    if picked is None:
        return 0
    if all(isinstance(v, int) for v in picked):
        arr = np.asarray(picked, dtype=np.int64)
        known[out.name] = arr
        _replace_with_initializer(model, out, arr)
        return 1
    partial[out.name] = picked
    return 0


def _vectors(values, partial: dict, known: dict) -> list[list] | None:
    """Each value as a partly known shape vector (its entries) or a constant 1-D vector."""
    out = []
    for v in values:
        if v is None:
            return None
        if v.name in partial:
            out.append(partial[v.name])
            continue
        c = _const_of(v, known)
        if c is None or c.ndim > 1:
            return None
        out.append([int(x) for x in c.reshape(-1)])
    return out


def _partial_equal(node: ir.Node, partial: dict, known: dict) -> list[bool | None] | None:
    """``Equal`` of a partly symbolic shape vector with another: True/False where decided,
    None where not. A symbolic entry is a dimension, never negative: it differs from a
    negative constant (the torch exporter's ``Equal(t, -1)`` guard)."""
    ops = _vectors(node.inputs, partial, known)
    if ops is None:
        return None
    n = max(len(o) for o in ops)
    if any(len(o) not in (1, n) for o in ops):
        return None
    a, b = ([o[0]] * n if len(o) == 1 else o for o in ops)
    out: list[bool | None] = []
    for x, y in zip(a, b, strict=True):
        if isinstance(x, int) and isinstance(y, int):
            out.append(x == y)
        elif (isinstance(x, int) and x < 0) or (isinstance(y, int) and y < 0):
            out.append(False)
        elif isinstance(x, str) and x == y:
            out.append(True)
        else:
            out.append(None)
    return out


def _partial_where(node: ir.Node, partial: dict, flags: dict, known: dict) -> list | None:
    """``Where`` over shape vectors with a partly decided condition, entry by entry."""
    cond = flags[node.inputs[0].name]
    branches = _vectors(node.inputs[1:], partial, known)
    if branches is None:
        return None
    n = len(cond)
    if any(len(b) not in (1, n) for b in branches):
        return None
    a, b = ([q[0]] * n if len(q) == 1 else q for q in branches)
    out = []
    for f, x, y in zip(cond, a, b, strict=True):
        if f is None and x != y:
            return None
        out.append(x if f or f is None else y)
    return out


def _refine_expand(node: ir.Node, target: list) -> int:
    """The output shape of an ``Expand`` whose run-time target is partly known (the mask and
    the repeated K/V heads of a model exported with a dynamic batch): numpy broadcasting of
    the input's dims with the target's, where decided. Returns 1 when a dim became known."""
    x, out = node.inputs[0], node.outputs[0]
    if x is None or x.shape is None:
        return 0
    dims = [d if isinstance(d, int) else (d.value if d is not None else None) for d in x.shape]
    r = max(len(dims), len(target))
    dims = [1] * (r - len(dims)) + dims
    tgt = [1] * (r - len(target)) + list(target)
    new: list[int | str | None] = []
    for d, t in zip(dims, tgt, strict=True):
        if t == 1 or t == d:
            new.append(d)
        elif d == 1:
            new.append(t)
        elif isinstance(d, int):
            new.append(d)  # a valid model broadcasts t (1 or d) to d
        elif isinstance(t, int):
            new.append(t)  # d is 1 or t
        else:
            new.append(None)
    old = out.shape
    before = 0 if old is None else sum(isinstance(d, int) for d in old)
    if old is not None and len(old) != r:
        return 0
    if sum(isinstance(d, int) for d in new) <= before:
        return 0
    out.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in new])
    return 1


def _partial_shape(node: ir.Node) -> list | None:
    """Shape of a tensor with some symbolic dims: ints where static, the symbol (str) where
    named, None where unknown."""
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    dims = [d if isinstance(d, int) else (d.value if d is not None else None) for d in x.shape]
    r = len(dims)
    start = node.attributes.get("start")
    end = node.attributes.get("end")
    s = 0 if start is None else int(start.value)
    e = r if end is None else int(end.value)
    s = max(0, min(r, s + r if s < 0 else s))
    e = max(0, min(r, e + r if e < 0 else e))
    return dims[s:e]


# ops whose output has as many elements as their first input, or fewer
_SAME_SIZE = {
    "Unsqueeze", "Squeeze", "Cast", "Reshape", "Identity", "Neg", "Floor", "Ceil", "Sqrt", "Abs",
    "Not", "Sign", "Transpose", "Flatten", "Cos", "Sin", "Clip", "Slice", "ReduceProd", "ReduceSum",
    "ReduceMax", "ReduceMin",
}  # fmt: skip
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Equal", "Max", "Min", "Mod", "Less", "Greater", "And", "Or", "Pow", "Where"}


def _fold_size(node: ir.Node, inputs: list[np.ndarray | None]) -> int | None:
    """How many elements evaluating ``node`` on the constant ``inputs`` produces, at most,
    worked out from the inputs' shapes and values in Python ints (never computed); None when
    it cannot tell (an op it does not size, or inputs the op would refuse)."""
    op = node.op_type
    ins = [a for a in inputs if a is not None]
    try:
        if op == "Constant":
            return _constant_size(node)
        if op in _SAME_SIZE:
            return int(inputs[0].size) if inputs and inputs[0] is not None else None
        if op in _BROADCAST:
            shape = _broadcast([list(a.shape) for a in ins])
            return None if shape is None else limits.numel(shape)
        if op == "Concat":
            return sum(int(a.size) for a in ins)
        if op == "Gather":
            data, idx = inputs[0], inputs[1]
            axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
            rest = [d for k, d in enumerate(data.shape) if k != axis % max(data.ndim, 1)]
            return limits.numel(rest) * int(idx.size)
        if op == "GatherElements":
            return int(inputs[1].size)
        if op == "NonZero":
            return int(inputs[0].ndim) * int(inputs[0].size)
        if op == "ConstantOfShape":
            return limits.numel(int(d) for d in inputs[0].reshape(-1))
        if op == "Expand":
            shape = _broadcast([list(inputs[0].shape), [int(d) for d in inputs[1].reshape(-1)]])
            return None if shape is None else limits.numel(shape)
        if op == "Tile":
            reps = [int(r) for r in inputs[1].reshape(-1)]
            if len(reps) != inputs[0].ndim:
                return None
            return limits.numel(d * r if r >= 0 else -1 for d, r in zip(inputs[0].shape, reps, strict=True))
        if op == "Range":
            return _range_size(*(a.reshape(-1)[0].item() for a in inputs[:3]))
        if op == "MatMul":  # numpy's: a 1-D operand is a row (left) or a column (right)
            a = [1, *inputs[0].shape] if inputs[0].ndim == 1 else list(inputs[0].shape)
            b = [*inputs[1].shape, 1] if inputs[1].ndim == 1 else list(inputs[1].shape)
            batch = _broadcast([a[:-2], b[:-2]])
            return None if batch is None else limits.numel([*batch, a[-2], b[-1]])
    except (IndexError, KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    return None


def _broadcast(shapes: list[list[int]]) -> list[int] | None:
    """The numpy broadcast of ``shapes`` (Python ints), or None when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0} - {1}
        if len(dims) > 1 or any(d < 0 for d in dims):
            return None
        out.append(dims.pop() if dims else 1)
    return out


def _range_size(start, limit, delta) -> int | None:
    """Elements of ``Range(start, limit, delta)``: ``max(ceil((limit - start) / delta), 0)``."""
    if delta == 0:
        return None
    if all(isinstance(x, int) for x in (start, limit, delta)):
        return max(-((start - limit) // delta), 0)
    n = (limit - start) / delta
    return max(math.ceil(n), 0) if math.isfinite(n) else None


def _constant_size(node: ir.Node) -> int | None:
    """Elements of a Constant node's value, from its attribute (sparse: its dense shape)."""
    for key, attr in node.attributes.items():
        if key in ("value", "sparse_value"):
            return limits.numel(attr.value.shape) if hasattr(attr.value, "shape") else None
        if key in ("value_floats", "value_ints", "value_strings"):
            return len(attr.value)
        if key in ("value_float", "value_int", "value_string"):
            return 1
    return None


def _evaluate(node: ir.Node, inputs: list[np.ndarray | None], opset: int) -> np.ndarray | None:
    try:
        proto = ir.serde.serialize_node(node)
        names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
        del proto.input[:]
        proto.input.extend(names)
        del proto.output[:]
        proto.output.append("out")
        feeds = {n: a for n, a in zip(names, inputs, strict=True) if n}
        graph = onnx.helper.make_graph(
            [proto],
            "fold",
            [
                onnx.helper.make_tensor_value_info(
                    n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
                )
                for n, a in feeds.items()
            ],
            [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.UNDEFINED, None)],
        )
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        (res,) = onnx.reference.ReferenceEvaluator(m).run(None, feeds)
        return np.asarray(res)
    except Exception as e:  # not foldable: leave the node alone
        log.debug("cannot fold %s (%s): %s", node.name, node.op_type, e)
        return None


def _is_uniform(tensor) -> bool:
    """Whether every element of a constant tensor has one value (read in chunks)."""
    arr = np.asarray(tensor.numpy()).reshape(-1)
    if arr.size == 0:
        return True
    first = arr[:1]
    step = 1 << 20
    return all(
        np.array_equal(arr[k : k + step], np.broadcast_to(first, arr[k : k + step].shape), equal_nan=arr.dtype.kind == "f")
        for k in range(0, arr.size, step)
    )


def _replace_with_initializer(model: ir.Model, out: ir.Value, arr) -> None:
    if isinstance(arr, np.ndarray) and out.dtype is not None:
        # a folded shape part keeps its element type (tf2onnx computes shapes in int32)
        try:
            want = np.dtype(out.dtype.numpy())
        except Exception:
            want = arr.dtype
        if want != arr.dtype and want.kind in "iu" and arr.dtype.kind in "iub":
            arr = arr.astype(want)
    name = out.name
    out.name = f"{name}__computed"
    tensor = arr if not isinstance(arr, np.ndarray) else ir.tensor(arr, name=name)
    nv = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype))
    nv.const_value = tensor
    add_initializer(model, nv)
    out.replace_all_uses_with(nv)


def add_initializer(model: ir.Model, value: ir.Value) -> None:
    """Register a new initializer; IR < 4 also lists every initializer as a graph input."""
    model.graph.register_initializer(value)
    if model.ir_version < 4:
        model.graph.inputs.append(value)


def remove_dead_nodes(model: ir.Model) -> None:
    """Drop nodes none of whose outputs is used or a graph output, and unused initializers."""
    g = model.graph
    changed = True
    while changed:
        changed = False
        for node in reversed(list(g)):
            if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                g.remove(node, safe=True)
                changed = True
    for name in list(g.initializers):
        v = g.initializers[name]
        if not v.uses() and not v.is_graph_output() and not v.is_graph_input():
            del g.initializers[name]


def split_shared_fills(model: ir.Model) -> int:
    """Give each reader of a run-time ``ConstantOfShape`` its own copy (the same uniform
    tensor, so exact). The torch exporter builds one zero state for all layers of a stacked
    RNN and slices it per layer: shared, it would tie every layer's hidden units together.
    Returns the number of copies made."""
    made = 0
    for node in list(model.graph):
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        if out.is_graph_output() or node.inputs[0] is None or node.inputs[0].const_value is not None:
            continue
        uses = list(out.uses())
        for k, (reader, index) in enumerate(uses[1:], start=1):
            twin = ir.Node(
                node.domain, node.op_type, list(node.inputs),
                attributes=list(node.attributes.values()), name=f"{node.name or 'ConstantOfShape'}_{k}",
            )  # fmt: skip
            twin.outputs[0].name = f"{out.name}_{k}"
            twin.outputs[0].shape = out.shape
            twin.outputs[0].type = out.type
            model.graph.insert_after(node, twin)
            reader.replace_input_with(index, twin.outputs[0])
            made += 1
    return made


def inline_constant_ifs(model: ir.Model) -> int:
    """Replace each top-level ``If`` whose condition is a constant by the nodes of the branch it
    always takes (exact: the other branch never runs). The If's outputs keep their names, as
    Identities of the branch's outputs. Returns the number of Ifs inlined."""
    g = model.graph
    done = 0
    for node in list(g):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        cond = _constant_array(node.inputs[0])
        if cond is None or cond.size != 1:
            continue
        attr = node.attributes.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
        if attr is None or len(attr.value.outputs) != len(node.outputs):
            continue
        branch = attr.value
        if not all(_same_shape(o, b) for o, b in zip(node.outputs, branch.outputs, strict=True)):
            # the If's declared shapes would not describe the branch's values (shapes inferred
            # after it, from the If's declaration, would then contradict them): leave it
            continue
        for name, v in list(branch.initializers.items()):
            if name in g.initializers:
                break
        else:
            for name, v in list(branch.initializers.items()):
                branch.initializers.pop(name)
                add_initializer(model, v)
            for inner in list(branch):
                branch.remove(inner)
                g.insert_before(node, inner)
            for out, src in zip(node.outputs, list(branch.outputs), strict=True):
                branch.outputs.remove(src)
                ident = ir.Node("", "Identity", [src], name=f"{node.name or 'If'}_{out.name}")
                res = ident.outputs[0]
                res.shape, res.type = out.shape or src.shape, out.type or src.type
                name = out.name
                out.name = f"{name}__if"
                res.name = name
                g.insert_before(node, ident)
                out.replace_all_uses_with(res, replace_graph_outputs=True)
            g.remove(node, safe=True)
            done += 1
    return done


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y
        for x, y in zip(a.shape, b.shape, strict=True)
    )


def _constant_array(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    # a condition is one element: a larger constant is not read (its size is declared)
    if v.const_value is not None and not v.is_graph_input():
        return v.const_value.numpy() if v.const_value.size <= _MAX_ELEMENTS else None
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        t = p.attributes["value"].value
        return t.numpy() if t.size <= _MAX_ELEMENTS else None
    return None
