"""Loading and saving ONNX models: errors name the file, writes are atomic, inputs untouched."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

import onnx_ir as ir
from spa_nm import limits
from spa_nm.errors import InputError, SurgeryError

__all__ = [
    "check_output_path",
    "check_run_paths",
    "infer_shapes",
    "light_proto",
    "load",
    "read_npz",
    "restore_types",
    "save",
    "serialize",
    "to_proto_with_data",
]

log = logging.getLogger(__name__)

_TWO_GB = 2**31 - 1


def load(path: str | os.PathLike, *, infer_shapes: bool = True) -> ir.Model:
    """Load ``path`` (external data included), validate it, and run shape inference.

    Raises:
        InputError: missing, empty, truncated or non-ONNX file; a tensor whose declared size
            is not the bytes it holds (raw or typed data, external data); external data
            outside the model's folder or missing.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an ONNX file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise InputError(f"{p}: not an ONNX model ({_short(e)})") from e
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{p}: not an ONNX model (no graph)")
    _check_tensor_sizes(p, proto)
    _check_external_data(p, proto)
    try:
        if any(True for _ in _external_tensors(proto)):
            onnx.checker.check_model(str(p))  # resolves external data beside the file
        else:
            onnx.checker.check_model(proto)
    except Exception as e:
        raise InputError(f"{p}: invalid ONNX model ({_short(e)})") from e
    stashed = _stash_map_types(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise InputError(f"{p}: cannot read the model ({_short(e)})") from e
    for v in (*model.graph.inputs, *model.graph.outputs):
        if v.name in stashed:
            v.meta[_TYPE_KEY] = stashed[v.name]
    _bind_external_data(model, p.parent)
    if infer_shapes:
        model = _infer_shapes(model, p)
    return model


# Graph inputs and outputs typed as maps (skl2onnx's ZipMap probabilities, DictVectorizer's
# input): onnx-ir has no map type, so they load untyped, their TypeProto kept here (the
# value's ``meta`` is copied by clone and never serialized), and are typed again on the way
# out.
_TYPE_KEY = "spa_nm.type_proto"


def _has_map(t: onnx.TypeProto) -> bool:
    kind = t.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind in ("sequence_type", "optional_type"):
        return _has_map(getattr(t, kind).elem_type)
    return False


def _stash_map_types(proto: onnx.ModelProto) -> dict[str, bytes]:
    """Untype the map-typed graph inputs/outputs of ``proto`` (and drop map-typed value_info)
    in place; returns name -> serialized TypeProto."""
    g = proto.graph
    stashed = {}
    for vi in (*g.input, *g.output):
        if vi.HasField("type") and _has_map(vi.type):
            stashed[vi.name] = vi.type.SerializeToString()
            vi.ClearField("type")
    keep = [vi for vi in g.value_info if not (vi.HasField("type") and _has_map(vi.type))]
    if len(keep) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(keep)
    return stashed


def restore_types(proto: onnx.ModelProto, model: ir.Model) -> onnx.ModelProto:
    """Give the graph inputs/outputs of ``proto`` (serialized from ``model``) back the map
    types they were loaded with; returns ``proto``."""
    types = {
        v.name: v.meta[_TYPE_KEY]
        for v in (*model.graph.inputs, *model.graph.outputs)
        if _TYPE_KEY in v.meta
    }
    if types:
        for vi in (*proto.graph.input, *proto.graph.output):
            if vi.name in types:
                vi.type.ParseFromString(types[vi.name])
    return proto


def serialize(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a ModelProto (external tensors stay references), map types restored."""
    return restore_types(ir.serde.serialize_model(model), model)


def infer_shapes(model: ir.Model) -> ir.Model:
    """Run ONNX shape inference on ``model`` in place (failures only leave shapes unknown)."""
    return _infer_shapes(model, Path("<model>"))


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def _external_tensors(proto: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for node in proto.graph.node:
        for a in node.attribute:
            if (
                a.type == onnx.AttributeProto.TENSOR
                and a.t.data_location == onnx.TensorProto.EXTERNAL
            ):
                yield a.t


def _check_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """Every external tensor (subgraphs and Constant nodes included) must live in a file inside
    the model's folder, with the bytes its dims and type need: a ``length`` that is not that
    many bytes, or an offset past the file's end, is refused before anything is read."""
    base = path.parent.resolve()
    for what, t in _all_tensors(proto):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc:
            raise InputError(f"{path}: external data of {t.name!r} has no location")
        try:
            if os.path.isabs(loc) or Path(loc).is_absolute():
                raise InputError(f"{path}: external data of {t.name!r} has an absolute location {loc!r}")
            target = (base / loc).resolve()
            inside = base == target or base in target.parents
            exists = inside and target.is_file()
            size = target.stat().st_size if exists else 0
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else None
        except (OSError, ValueError) as e:
            raise InputError(
                f"{path}: external data location of {t.name!r} is not a usable path ({_short(e)})"
            ) from e
        if not inside:
            raise InputError(
                f"{path}: external data of {t.name!r} points outside the model folder ({loc!r})"
            )
        if not exists:
            raise InputError(f"{path}: external data file {loc!r} of {t.name!r} is missing")
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"{path}: external data of {t.name!r} has a negative offset or length")
        n, nbytes = _declared(path, what, t)
        if length is not None and nbytes is not None and length != nbytes:
            raise InputError(
                f"{path}: {what} {t.name!r} declares {limits.show_count(n)} elements"
                f" ({limits.show_bytes(nbytes)}) but its external data holds {limits.show_bytes(length)}"
            )
        need = offset + (length if length is not None else nbytes or 0)
        if need > size:
            raise InputError(
                f"{path}: external data of {t.name!r} is truncated ({loc!r} has {size} bytes, needs {need})"
            )


def _all_tensors(proto: onnx.ModelProto) -> Iterable[tuple[str, onnx.TensorProto]]:
    """(``"initializer"`` or ``"tensor"``, tensor) for every dense tensor of the model: the
    initializers and node attributes of every graph and subgraph, and of local functions."""
    todo = [proto.graph, *proto.functions]
    while todo:
        g = todo.pop()
        for t in getattr(g, "initializer", ()):
            yield "initializer", t
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield "tensor", a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from (("tensor", t) for t in a.tensors)
                elif a.type == onnx.AttributeProto.GRAPH:
                    todo.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    todo.extend(a.graphs)


def _declared(path: Path, what: str, t: onnx.TensorProto) -> tuple[int, int | None]:
    """(elements, bytes) that ``t``'s dims and type declare, in Python ints (bytes None where
    the type has no fixed size: strings, unknown types). InputError for a negative dim or a
    count past int64, which no reader can index."""
    if any(d < 0 for d in t.dims):
        raise InputError(f"{path}: {what} {t.name!r} has a negative dimension ({min(t.dims)})")
    n = math.prod(t.dims)
    if n > limits.INT64_MAX:
        raise InputError(
            f"{path}: {what} {t.name!r} declares {limits.show_count(n)} elements"
            f" (dims {list(t.dims)}), more than int64 can count"
        )
    return n, _nbytes(t)


def _check_tensor_sizes(path: Path, proto: onnx.ModelProto) -> None:
    """Every tensor held in the file must hold the data its dims declare: raw bytes, or values
    in its typed field (``float_data``, ``int64_data``, ...). A contradiction is refused in one
    line naming the tensor, before anything reads it (an initializer that declares 10^12
    elements with 4 bytes of data is not a weight of 4 TB)."""
    for what, t in _all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue  # _check_external_data compares it with its file
        n, nbytes = _declared(path, what, t)
        if t.HasField("raw_data"):
            have, unit, need = len(t.raw_data), "bytes", nbytes
        elif t.data_type == onnx.TensorProto.STRING:
            have, unit, need = len(t.string_data), "values", n
        else:
            field = _typed_field(t.data_type)
            if field is None:
                continue  # sub-byte or unknown types: packing rules vary, the checker decides
            per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            have, unit, need = len(getattr(t, field)), "values", n * per
        if need is None or have == need:
            continue
        size = f" ({limits.show_bytes(nbytes)})" if nbytes is not None else ""
        held = limits.show_bytes(have) if unit == "bytes" else f"{have} value{'' if have == 1 else 's'}"
        raise InputError(
            f"{path}: {what} {t.name!r} declares {limits.show_count(n)} elements{size} but holds {held}"
        )


def _typed_field(data_type: int) -> str | None:
    """The typed-data field of a tensor of ``data_type`` holding one entry per element, or None
    (sub-byte types pack several; unknown types)."""
    if data_type in _SUB_BYTE_BITS:
        return None
    try:
        return onnx.helper.tensor_dtype_to_field(data_type)
    except Exception:
        return None


# bits per element of the packed sub-byte types
_SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


def _nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes of ``t``'s data as its dims and type declare them (Python ints: never overflows;
    sub-byte types packed); None for strings and unknown types."""
    n = math.prod(int(d) for d in t.dims)
    bits = _SUB_BYTE_BITS.get(t.data_type)
    if bits is not None:
        return math.ceil(n * bits / 8)
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return None


def _bind_external_data(model: ir.Model, base: Path) -> None:
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            v.const_value = ir.ExternalTensor(
                t.location,
                t.offset,
                t.length,
                t.dtype,
                shape=t.shape,
                name=t.name,
                base_dir=str(base),
            )


# initializers up to this many bytes keep their data in a light proto (shape vectors, axes)
_LIGHT_BYTES = 1000


def light_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a proto whose large initializers are graph inputs (type and shape, no
    data), map types restored: shape inference needs their shapes, never their values. The
    model is left as it was."""
    g = model.graph
    big = {
        name: v
        for name, v in g.initializers.items()
        if v.const_value is None or v.const_value.nbytes > _LIGHT_BYTES
    }
    saved = {name: v.const_value for name, v in big.items()}
    serde_log = logging.getLogger(ir.serde.__name__)
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)  # it warns about each data-less initializer
    try:
        for v in big.values():
            v.const_value = None
        proto = serialize(model)
    finally:
        for name, v in big.items():
            v.const_value = saved[name]
        serde_log.setLevel(level)
    keep = [t for t in proto.graph.initializer if t.name not in big]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    listed = {i.name for i in proto.graph.input}
    for name, v in big.items():
        t = saved[name]
        dtype = t.dtype if t is not None else v.dtype
        shape = t.shape if t is not None else v.shape
        if name in listed or dtype is None or shape is None:
            continue
        proto.graph.input.append(
            onnx.helper.make_tensor_value_info(name, int(dtype), [int(d) for d in shape])
        )
    return proto


def _infer_shapes(model: ir.Model, path: Path) -> ir.Model:
    """ONNX shape inference (with data propagation) on a light copy, merged back by value
    name; map-typed values are left untyped (onnx-ir cannot hold them).

    Data propagation is bounded (`_bounded_proto`): where the model's shapes leave a vector it
    would read unknown, a pass without it comes first, and the vectors it would expand past
    `limits.PROPAGATION_VALUE` elements (or all of them past `limits.PROPAGATION_ELEMENTS`)
    are read through stand-ins that carry no values."""
    try:
        for _ in range(3):
            proto, cuts = _bounded_proto(model)
            if cuts:  # shapes first, without data propagation (it cannot grow: no values)
                _merge_inferred(model, light_proto(model), data_prop=False)
                proto, cuts = _bounded_proto(model)
            for _ in range(3):
                _merge_inferred(model, proto, data_prop=True)
                if not cuts:
                    break
                # what this pass found may lift cuts (a vector's length is known now)
                proto, again = _bounded_proto(model)
                if again == cuts:
                    break
                cuts = again
            if not _same_shape_ml_ops(model):
                break
    except Exception as e:  # the model loads: missing shapes only block channels later
        log.warning("%s: shape inference failed (%s)", path, _short(e))
    return model


def _merge_inferred(model: ir.Model, proto: onnx.ModelProto, *, data_prop: bool) -> None:
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=data_prop)
    _stash_map_types(inferred)
    _merge_shapes(model, ir.serde.deserialize_model(inferred))


# -- bounded data propagation ----------------------------------------------------------------
#
# ONNX data propagation keeps the value of every shape vector as a TensorShapeProto, one
# message per element, and reads any 1-D input of known length N of an op that propagates
# (Cast, Add, Concat, Gather, Size, ... and function ops, whose bodies do) as N unknown
# entries: a 5 KB model with a Range to 10^9 (or a graph input declared [10^9]) feeding a Cast
# takes 100 GB there. So the copy it runs on reads, at such an op, a vector through a stand-in
# graph input of the same type and rank with unknown dims (which carries no values) when the
# vector is longer than limits.PROPAGATION_VALUE, when the vectors read so far reach
# limits.PROPAGATION_ELEMENTS, or when its length is not known yet (this very pass could make
# it long); the latter are lifted on the next pass once their length is known.


def _bounded_proto(model: ir.Model) -> tuple[onnx.ModelProto, frozenset]:
    """A light proto of ``model`` whose data propagation is bounded, and the cuts made in it
    (graph, node, input index): empty when it is the plain light proto."""
    proto = light_proto(model)
    graphs = list(_proto_graphs(proto.graph))
    shapes: dict[str, list | None] = {}
    types: dict[str, int] = {}
    with_data: dict[str, int] = {}
    for g in graphs:
        for vi in (*g.input, *g.value_info, *g.output):
            if vi.type.WhichOneof("value") == "tensor_type":
                tt = vi.type.tensor_type
                shapes[vi.name] = _dims_of(tt) if tt.HasField("shape") else None
                types[vi.name] = tt.elem_type
        for t in g.initializer:
            shapes[t.name] = list(t.dims)
            types[t.name] = t.data_type
            with_data[t.name] = math.prod(t.dims)
    given = {vi.name for vi in proto.graph.input} | set(with_data)
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    local = {(f.domain, f.name) for f in proto.functions}
    cuts, stand_ins, seen = [], {}, set()
    budget = limits.PROPAGATION_ELEMENTS
    for gi, g in enumerate(graphs):
        for ni, node in enumerate(g.node):
            if not _propagates(node, opsets, local):
                continue
            shape_op = node.op_type == "Shape" and node.domain in ("", "ai.onnx")
            lens, cut = {}, []
            for k, name in enumerate(node.input):
                if not name:
                    continue
                n = _data_len(name, shapes, with_data, given, shape_op)
                if n is None or n > limits.PROPAGATION_VALUE:
                    cut.append(k)
                elif n:
                    lens[k] = n
            cost = sum(n for k, n in lens.items() if node.input[k] not in seen) + sum(lens.values())
            if cost > budget:
                cut += list(lens)
            else:
                budget -= cost
                seen.update(node.input[k] for k in lens)
            for k in sorted(cut):
                name = node.input[k]
                cuts.append((gi, ni, k))
                if not types.get(name):
                    # not typed yet, so no stand-in can take its place: the caller infers
                    # without data propagation first, which types it
                    continue
                rank = None if shape_op or shapes.get(name) is None else len(shapes[name])
                key = (name, rank)
                if key not in stand_ins:
                    stand_ins[key] = _stand_in(proto, len(stand_ins), types[name], rank)
                node.input[k] = stand_ins[key]
    return proto, frozenset(cuts)


def _proto_graphs(g: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """``g`` and its subgraphs, depth first, in a fixed order."""
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _proto_graphs(sub)


def _dims_of(tt: onnx.TypeProto.Tensor) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _data_len(name: str, shapes: dict, with_data: dict, given: set, shape_op: bool) -> int | None:
    """How many elements data propagation makes of value ``name`` when an op reads it (for
    ``Shape``, its rank); None when that is not known yet and this pass could reveal it."""
    if name in with_data and not shape_op:
        return with_data[name]
    dims = shapes.get(name)
    if dims is None:  # no shape: an input stays so, a computed value may get one now
        return 0 if name in given else None
    if shape_op:
        return len(dims)
    if len(dims) == 0:
        return 1
    if len(dims) > 1:
        return 0  # data propagation reads scalars and vectors only
    if dims[0] is None:
        return 0 if name in given else None
    return dims[0]


def _stand_in(proto: onnx.ModelProto, k: int, elem_type: int, rank: int | None) -> str:
    """Add a graph input of ``elem_type`` and ``rank`` (None: unknown) with unknown dims."""
    name = f"__spa_nm_nodata_{k}"
    vi = onnx.helper.make_tensor_value_info(name, elem_type, None if rank is None else [None] * rank)
    proto.graph.input.append(vi)
    return name


def _propagates(node: onnx.NodeProto, opsets: dict, local: set) -> bool:
    """Whether ONNX data propagation reads ``node``'s inputs: its schema has a propagator, or
    it is a function (local, or a schema without its own inference) inferred through its body."""
    if (node.domain, node.op_type) in local:
        return True
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = opsets.get(domain)
    return version is not None and _schema_propagates(domain, node.op_type, version)


@functools.lru_cache(maxsize=None)
def _schema_propagates(domain: str, op_type: str, version: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except Exception:  # no schema: not inferred at all
        return False
    if schema.has_data_propagation_function:
        return True
    return not schema.has_type_and_shape_inference_function and (
        schema.has_function or schema.has_context_dependent_function
    )


# ai.onnx.ml ops whose output has the input's shape, which ONNX does not infer (an sklearn
# scaler in front of an MLP would leave the whole network without shapes)
_ML_SAME_SHAPE = {"Scaler", "Normalizer", "Binarizer", "Imputer"}


def _same_shape_ml_ops(model: ir.Model) -> int:
    """Give those ops' outputs their input's shape (and float type where the op says so);
    returns how many it set."""
    done = 0
    for node in model.graph:
        if node.domain != "ai.onnx.ml" or node.op_type not in _ML_SAME_SHAPE:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or y.shape is not None:
            continue
        y.shape = ir.Shape(list(x.shape))
        if y.dtype is None:
            y.dtype = x.dtype if node.op_type in ("Binarizer", "Imputer") else ir.DataType.FLOAT
        done += 1
    return done


def _merge_shapes(model: ir.Model, inferred: ir.Model) -> None:
    for graph, other in zip(model.graphs(), inferred.graphs(), strict=False):
        found = ir.convenience.create_value_mapping(other)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            got = found.get(name)
            if got is None:
                continue
            if got.shape is not None and value.shape != got.shape:
                value.shape = got.shape
            if got.dtype is not None and value.dtype != got.dtype:
                value.dtype = got.dtype


def check_output_path(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    *,
    outputs: Iterable[str | os.PathLike] = (),
    sidecar: bool = True,
) -> Path:
    """Refuse, before anything is written, an output that leads to a file the run reads or
    writes: an input, an input's external-data file, or another output of the same run
    (``outputs``, their ``.data`` files included). With ``sidecar``, the ``<name>.data`` that
    ``out`` may bring is held to the same rule (its weights would land there).

    Paths compare by where they lead (symlinks followed, hard links by samefile). The path
    returned keeps ``out``'s last component as written: a symlink there is replaced by the
    write, never written through.
    """
    entry = _entry(out)
    inputs = [Path(i) for i in inputs]
    mine = [entry, entry.with_name(entry.name + ".data")] if sidecar else [entry]
    for p in mine:
        shown = str(out) if p is entry else str(p)
        _refuse_input(p, shown, inputs)
        for o in outputs:
            o = Path(o)
            for q in (o, o.with_name(o.name + ".data")):
                if _same_file(p, q):
                    raise InputError(f"{shown}: output path is also {q}, written by this run; choose another output")
    return entry


def check_run_paths(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike],
    report: str | os.PathLike | None = None,
) -> None:
    """`check_output_path` for every file one run will write, before it writes any: each model
    output (and its ``.data``) against the inputs and the other outputs, and the report
    against all of them."""
    outputs, inputs = [Path(o) for o in outputs], [Path(i) for i in inputs]
    for k, o in enumerate(outputs):
        check_output_path(o, inputs, outputs=outputs[:k] + outputs[k + 1 :])
    if report is not None:
        check_output_path(report, inputs, outputs=outputs, sidecar=False)


def _entry(path: str | os.PathLike) -> Path:
    """``path`` absolute, its folder resolved and its last component as written."""
    p = Path(path)
    return p.parent.resolve() / p.name


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` lead to the same file (or would: neither needs to exist)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _refuse_input(p: Path, shown: str, inputs: list[Path]) -> None:
    """InputError (naming ``p`` as ``shown``) when output path ``p`` leads to an input file or,
    when it exists, to one of the files the inputs read their weights from."""
    for i in inputs:
        if _same_file(p, i):
            raise InputError(f"{shown}: output path is the input file {i}; choose another output")
    if not os.path.exists(p):  # an input's weights exist: a path that does not is none of them
        return
    for i in inputs:
        for data in _input_sidecars(i):
            if _same_file(p, data):
                raise InputError(
                    f"{shown}: output path is {data}, which holds the weights of input {i}; choose another output"
                )


# files that are inputs of a run without being models (training data): never parsed as ONNX
_DATA_SUFFIXES = (".npz", ".npy", ".json", ".txt", ".csv")


def _input_sidecars(path: Path) -> tuple[Path, ...]:
    """The external-data files input model ``path`` reads (none when it is no readable model)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    if not path.is_file() or path.suffix.lower() in _DATA_SUFFIXES:
        return ()
    return _sidecars_of(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _sidecars_of(real: str, mtime_ns: int, size: int) -> tuple[Path, ...]:
    """(Cached by file identity: a batch asks once per output about the same inputs.)"""
    try:
        proto = onnx.load(real, load_external_data=False)
    except Exception:
        return ()
    base = Path(real).parent
    found = {
        base / e.value
        for t in _external_tensors(proto)
        for e in t.external_data
        if e.key == "location" and e.value
    }
    return tuple(sorted(found))


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    external_data: bool | None = None,
    verify: bool = True,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` atomically: to a temporary folder beside ``path``, then renamed into
    place, so a reader never sees a partial file and a symlink at ``path`` is replaced, not
    written through. Every temporary is removed whatever happens (Ctrl-C and SIGTERM too).

    Weights go to ``<name>.data`` beside the file when ``external_data`` is True, or, by
    default, when the model came with external data or is over 2 GB; small tensors and the
    ones ops read as shapes or axes stay in the model file (`_inline_values`). The data file is
    moved into place first and the model file last.

    With ``verify`` (the default; off for intermediate files) and onnxruntime installed, the
    written file is loaded, and run once when cheap, before it is moved into place: a file
    onnxruntime refuses is a SurgeryError and nothing is left behind, unless ``source`` (the
    input the model was made from; by default the only model among ``inputs``, or the one of
    the output's name) is refused the same way (`_verify_written`).

    Raises:
        InputError: an output that leads to an input or its weights, an unwritable folder.
        SurgeryError: onnxruntime refuses the written model.
    """
    inputs = [Path(i) for i in inputs]
    out = check_output_path(path, inputs, sidecar=False)
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the output folder ({e.strerror})") from e
    if not os.access(folder, os.W_OK):
        raise InputError(f"{out}: output folder is not writable")
    sources = _external_sources(model)
    if external_data is None:
        external_data = bool(sources) or _model_bytes(model) > _TWO_GB - (64 << 20)
    data_name = out.name + ".data"
    if external_data:
        check_output_path(folder / data_name, inputs, sidecar=False)
        if Path(os.path.realpath(folder / data_name)) in sources:
            raise InputError(f"{out}: would overwrite {data_name}, which holds the input's weights")
    tmpdir = Path(tempfile.mkdtemp(prefix=".spa_nm-", dir=folder))
    try:
        tmp_model = tmpdir / out.name
        _write(model, tmp_model, data_name if external_data else None, keep_inline=bool(sources))
        if verify:
            _verify_written(tmp_model, out, _source_of(out, inputs, source), _model_bytes(model))
        if external_data:
            os.replace(tmpdir / data_name, folder / data_name)
        os.replace(tmp_model, out)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e.strerror or e})") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


# tensors under this many bytes stay inside the model file (onnx's own default threshold)
_INLINE_BYTES = 1024

# the inputs whose values ONNX shape inference reads (shapes, axes, sizes, slice bounds, ...):
# onnxruntime type-checks a graph before it loads external data, so these must be inline
_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Unsqueeze": (1,), "Squeeze": (1,),
    "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "ConstantOfShape": (0,), "Resize": (1, 2, 3),
    "Upsample": (1,), "Split": (1,), "TopK": (1,), "OneHot": (1,), "Range": (0, 1, 2),
    "CenterCropPad": (1, 2), "Col2Im": (1, 2), "DFT": (1, 2), "STFT": (1, 3),
    "MelWeightMatrix": (0, 1, 2), "BlackmanWindow": (0,), "HannWindow": (0,),
    "HammingWindow": (0,), "AffineGrid": (1,), "MaxUnpool": (2,),
    **{f"Reduce{r}": (1,) for r in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")},
}  # fmt: skip


def _inline_values(model: ir.Model, keep_inline: bool) -> set[int]:
    """ids of the initializers that stay in the model file when weights go to a data file:
    under `_INLINE_BYTES`, read by some node as a shape-type input (`_DATA_INPUTS`, any
    size), and, with ``keep_inline`` (the model came with external data), those that were
    inline in the file it was loaded from."""
    keep = set()
    for graph in model.graphs():
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                continue
            for k in _DATA_INPUTS.get(node.op_type, ()):
                if k < len(node.inputs) and node.inputs[k] is not None:
                    keep.add(id(node.inputs[k]))
        for v in graph.initializers.values():
            t = v.const_value
            if t is None:
                continue
            if t.nbytes < _INLINE_BYTES or (keep_inline and isinstance(t, ir.TensorProtoTensor)):
                keep.add(id(v))
    return keep


def _write(model: ir.Model, path: Path, data_name: str | None, *, keep_inline: bool = False) -> None:
    """Serialize ``model`` to ``path`` and, with ``data_name``, its large weights to that file
    beside it; without, every tensor inline. The model is left as it was: its initializers hold
    the written tensors only while it is serialized.

    The bytes are written here rather than by onnx-ir's saver, which releases the memory map of
    every external tensor it reads into memory: that fails while the input model (whose tensors
    the output shares) still views its data file.
    """
    inline = _inline_values(model, keep_inline) if data_name else None
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        if data_name is None:
            for v in _initializers(model):
                if isinstance(v.const_value, ir.ExternalTensor):
                    swapped.append((v, v.const_value))
                    v.const_value = _in_memory(v.const_value)
        else:
            with open(path.parent / data_name, "wb") as f:
                for v in _initializers(model):
                    t = v.const_value
                    if id(v) in inline:
                        new = _in_memory(t) if isinstance(t, ir.ExternalTensor) else t
                    else:
                        new = _append(f, t, data_name, path.parent)
                    if new is not t:
                        swapped.append((v, t))
                        v.const_value = new
        proto = serialize(model)
    finally:
        for v, t in swapped:
            v.const_value = t
    onnx.save(proto, str(path))


def _initializers(model: ir.Model) -> list[ir.Value]:
    """Every initializer with a value, subgraphs included, in declaration order."""
    return [
        v for g in model.graphs() for v in g.initializers.values() if v.const_value is not None
    ]


def _in_memory(t: ir.TensorProtocol) -> ir.Tensor:
    """An in-memory copy of ``t`` (its data read from wherever it lives)."""
    return ir.Tensor(t.numpy(), dtype=t.dtype, name=t.name)


# tensors over this many bytes start at an offset that is a multiple of _ALIGN (as onnx
# aligns them), so a runtime can memory-map them
_ALIGN_OVER, _ALIGN = 1 << 20, 1 << 16


def _append(f, t: ir.TensorProtocol, location: str, base_dir: Path) -> ir.ExternalTensor:
    """Write ``t``'s bytes at the end of data file ``f``; returns the tensor that reads them."""
    offset = f.tell()
    if t.nbytes > _ALIGN_OVER and offset % _ALIGN:
        f.write(b"\0" * (_ALIGN - offset % _ALIGN))
        offset = f.tell()
    data = t.tobytes()
    f.write(data)
    return ir.ExternalTensor(
        location, offset, len(data), t.dtype, shape=t.shape, name=t.name, base_dir=str(base_dir)
    )


def to_proto_with_data(model: ir.Model) -> onnx.ModelProto:
    """The model as a ModelProto with every external tensor's bytes inside (the model itself is
    left as it is)."""
    proto = serialize(model)
    for i, t in enumerate(proto.graph.initializer):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            arr = model.graph.initializers[t.name].const_value.numpy()
            proto.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    return proto


def _external_sources(model: ir.Model) -> set[Path]:
    """Resolved paths of the files the model's external tensors are read from."""
    out = set()
    for v in _initializers(model):
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            out.add(Path(os.path.realpath(Path(t.base_dir or ".") / t.location)))
    return out


def _model_bytes(model: ir.Model) -> int:
    return sum(int(v.const_value.nbytes) for v in _initializers(model))


# -- the post-write check: does onnxruntime take the written file? ---------------------------

# the written model is also run once on random inputs when its weights are at most this large
# and its inputs at most _RUN_ELEMENTS elements in all
_RUN_BYTES = 64 << 20
_RUN_ELEMENTS = 1 << 24


def _source_of(out: Path, inputs: list[Path], source: str | os.PathLike | None) -> Path | None:
    """The input model ``out`` was made from: ``source``, else the only model file among
    ``inputs``, else the only one named as ``out`` (a batch writes ``out/<input name>``)."""
    if source is not None:
        return Path(source)
    models = [p for p in inputs if p.suffix.lower() not in _DATA_SUFFIXES and p.is_file()]
    if len(models) == 1:
        return models[0]
    named = [p for p in models if p.name == out.name]
    return named[0] if len(named) == 1 else None


def _verify_written(tmp_model: Path, out: Path, source: Path | None, weights: int) -> None:
    """Raise SurgeryError when onnxruntime cannot load (or, when cheap, run) the model just
    written to ``tmp_model``, unless the fault is not the output's: ``source`` fails the same
    way (an op with no CPU kernel, an input random values cannot feed), or, with no source to
    compare, the only complaint is a missing kernel (the file itself parsed and type-checked:
    onnxruntime looks kernels up after that). Without onnxruntime there is nothing to check."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    run = weights <= _RUN_BYTES
    problem = _ort_problem(tmp_model, run)
    if problem is None:
        return
    stage, kind, msg = problem
    if source is not None and source.is_file():
        before = _ort_problem(source, run)
        same = before is not None and (stage == "run" or _alike(before) == _alike(problem))
    else:
        same = stage == "load" and kind == "NotImplemented"
    if same:
        log.info("%s: onnxruntime %s: %s (the input fails the same way; written anyway)", out, stage, msg)
        return
    what = "load" if stage == "load" else "run"
    raise SurgeryError(f"{out}: onnxruntime cannot {what} the written model: {msg.replace('<model>', str(out))}")


def _ort_problem(path: Path, run: bool) -> tuple[str, str, str] | None:
    """None when onnxruntime (CPU, no graph optimizations) loads ``path`` and, with ``run``
    and inputs `_random_feeds` can make, runs it; else (stage, error class, first line of the
    message with the path as ``<model>``), comparable between two files."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # the message comes back in the exception
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        return "load", type(e).__name__, _ort_line(e, path)
    feeds = _random_feeds(sess) if run else None
    if feeds is None:
        return None
    try:
        sess.run(None, feeds)
    except Exception as e:
        return "run", type(e).__name__, _ort_line(e, path)
    return None


def _alike(problem: tuple[str, str, str]) -> tuple[str, str, str]:
    """``problem`` with its numbers blanked: pruning changes sizes, not what is wrong."""
    stage, kind, msg = problem
    return stage, kind, re.sub(r"\d+", "#", msg)


def _ort_line(e: Exception, path: Path) -> str:
    return _short(e).replace(str(path), "<model>")


def _random_feeds(sess) -> dict[str, np.ndarray] | None:
    """Random arrays for every input of ``sess`` (`spa_nm.runtime.random_input`), or None when
    that is not cheap and sure: a non-tensor input, a dim other than the batch that is not a
    fixed size, or inputs over `_RUN_ELEMENTS` elements."""
    from spa_nm.runtime import random_input

    infos = sess.get_inputs()
    total = 0
    for i in infos:
        if not i.type.startswith("tensor(") or any(
            not (isinstance(d, int) and d > 0) and j > 0 for j, d in enumerate(i.shape)
        ):
            return None
        total += int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in i.shape]))
    if total > _RUN_ELEMENTS:
        return None
    rng = np.random.default_rng(0)
    return {i.name: random_input(rng, i, 1, 1) for i in infos}


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles); InputError names the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"{p}: not a readable .npz file ({why})") from e
