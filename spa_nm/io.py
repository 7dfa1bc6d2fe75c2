"""Loading and saving ONNX models: errors name the file, writes are atomic, inputs untouched."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

import onnx_ir as ir
from spa_nm.errors import InputError

__all__ = [
    "check_output_path",
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
        InputError: missing, empty, truncated or non-ONNX file; external data outside the
            model's folder or missing.
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
    """Every external tensor must live in a file inside the model's folder, with its bytes."""
    base = path.parent.resolve()
    for t in _external_tensors(proto):
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
        need = offset + (length if length is not None else _nbytes(t) or 0)
        if offset < 0 or need > size:
            raise InputError(
                f"{path}: external data of {t.name!r} is truncated ({loc!r} has {size} bytes, needs {need})"
            )


def _nbytes(t: onnx.TensorProto) -> int | None:
    try:
        n = 1
        for d in t.dims:
            n *= int(d)
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
    name; map-typed values are left untyped (onnx-ir cannot hold them)."""
    try:
        for _ in range(3):
            inferred = onnx.shape_inference.infer_shapes(
                light_proto(model), check_type=True, strict_mode=False, data_prop=True
            )
            _stash_map_types(inferred)
            _merge_shapes(model, ir.serde.deserialize_model(inferred))
            if not _same_shape_ml_ops(model):
                break
    except Exception as e:  # the model loads: missing shapes only block channels later
        log.warning("%s: shape inference failed (%s)", path, _short(e))
    return model


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


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """Refuse an output that is (or would overwrite) an input."""
    o = Path(out).resolve()
    for i in inputs:
        ip = Path(i).resolve()
        if o == ip or (o.exists() and ip.exists() and os.path.samefile(o, ip)):
            raise InputError(f"{out}: output path is the input file; choose another output")
    return o


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` atomically: to a temporary file in the same folder, then rename.

    Weights go to ``<name>.data`` beside the file when ``external_data`` is True, or, by
    default, when the model came with external data or is over 2 GB; the data file is moved into
    place first and the model file last. Refuses to overwrite an input or the external data the
    model is still reading from.
    """
    out = check_output_path(path, inputs)
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
    if external_data and (folder / data_name).resolve() in sources:
        raise InputError(f"{out}: would overwrite {data_name}, which holds the input's weights")
    tmpdir = Path(tempfile.mkdtemp(prefix=".spa_nm-", dir=folder))
    try:
        tmp_model = tmpdir / out.name
        if external_data:
            # threshold 0: every tensor goes to the data file, none is loaded and released
            # (releasing a memory map fails while the input model still views it)
            ir.save(model, tmp_model, external_data=data_name, size_threshold_bytes=0)
            _retype_file(tmp_model, model)
            os.replace(tmpdir / data_name, folder / data_name)
        else:
            _materialize(model)
            ir.save(model, tmp_model)
            _retype_file(tmp_model, model)
        os.replace(tmp_model, out)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e.strerror or e})") from e
    finally:
        for f in tmpdir.glob("*"):
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            tmpdir.rmdir()
    return out


def _retype_file(path: Path, model: ir.Model) -> None:
    """Put the stashed map types back into a model file just written (weights left where
    they are: external data stays external)."""
    if not any(_TYPE_KEY in v.meta for v in (*model.graph.inputs, *model.graph.outputs)):
        return
    proto = onnx.load(str(path), load_external_data=False)
    onnx.save(restore_types(proto, model), str(path))


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
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            out.add((Path(t.base_dir or ".") / t.location).resolve())
    return out


def _materialize(model: ir.Model) -> None:
    """Load external tensors into memory so the saved file is self-contained."""
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            v.const_value = ir.tensor(t.numpy(), name=t.name)


def _model_bytes(model: ir.Model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None:
            total += int(t.nbytes)
    return total


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
