"""Loading and saving ONNX models: errors name the file, writes are atomic, inputs untouched."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

import onnx_ir as ir
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
