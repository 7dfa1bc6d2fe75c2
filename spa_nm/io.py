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

__all__ = ["check_output_path", "infer_shapes", "load", "read_npz", "save", "to_proto_with_data"]

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
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise InputError(f"{p}: cannot read the model ({_short(e)})") from e
    _bind_external_data(model, p.parent)
    if infer_shapes:
        model = _infer_shapes(model, p)
    return model


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


def _infer_shapes(model: ir.Model, path: Path) -> ir.Model:
    from onnx_ir.passes.common import ShapeInferencePass

    try:
        ShapeInferencePass(strict_mode=False)(model)
    except Exception as e:  # the model loads: missing shapes only block channels later
        log.warning("%s: shape inference failed (%s)", path, _short(e))
    return model


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
            os.replace(tmpdir / data_name, folder / data_name)
        else:
            _materialize(model)
            ir.save(model, tmp_model)
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


def to_proto_with_data(model: ir.Model) -> onnx.ModelProto:
    """The model as a ModelProto with every external tensor's bytes inside (the model itself is
    left as it is)."""
    proto = ir.serde.serialize_model(model)
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
