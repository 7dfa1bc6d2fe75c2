"""What every command checks on an input model before it reads it: the full ONNX checker (strict
shape inference), and what that checker lets through but the rest of spa_nm cannot take (sparse
initializers, names that are not UTF-8, tensors holding more data than their shape, negative
dims). Each refusal is one `InputError` line naming the file as the user gave it.

The checker runs on the file (its path form), never on a second copy of the loaded model: with
external data that reads only the graph, without it the model is checked before it is loaded, so
two copies are never held at once. onnxruntime is not involved: whether a written model loads
there is the writer's check.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

from spa_nm.errors import InputError

__all__ = [
    "check_file",
    "checkable_in_memory",
    "checker_error",
    "load_input",
    "model_checker_error",
    "refuse_unreadable",
]

log = logging.getLogger("spa_nm")

# the in-memory checker takes one serialized proto: under 2 GB
_IN_MEMORY_BYTES = 2**31 - 1 - (64 << 20)


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0].strip() if lines else type(e).__name__)[:300]


def checker_error(path: str | os.PathLike) -> str | None:
    """The first line of what the full ONNX checker says about the model file (None: it passes)."""
    import onnx

    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError, or a file the checker cannot read
        return first_line(e)
    return None


def model_checker_error(model) -> str | None:
    """The same for an in-memory `onnx_ir` model (a result about to be written). Only for a
    model `checkable_in_memory` says fits; check the written file otherwise."""
    import onnx

    from spa_nm.io import to_proto_with_data

    try:
        onnx.checker.check_model(to_proto_with_data(model), full_check=True)
    except Exception as e:
        return first_line(e)
    return None


def checkable_in_memory(model) -> bool:
    """Whether the in-memory checker can take the model (one serialized proto, under 2 GB)."""
    total = sum(
        int(v.const_value.nbytes)
        for v in model.graph.initializers.values()
        if v.const_value is not None
    )
    return total <= _IN_MEMORY_BYTES


def load_input(path: str, *, force: bool = False) -> tuple[Any, str | None]:
    """Check and load the model at ``path`` (as the user wrote it): returns the model and, with
    ``force``, the checker's message for an input that fails it (None when it passes).

    Raises:
        InputError: ``PATH: invalid model: <the checker's first line>`` (unless ``force``), or an
            input spa_nm cannot read whatever ``force`` says; the loader's own errors (missing,
            empty, truncated, external data outside the folder) come first.
    """
    from spa_nm import api

    problem, external = _check_file(path)
    if problem is not None and not force:
        raise InputError(f"{path}: invalid model: {problem}")
    model = api.load(path)
    if external:  # after the loader has vetted where the data lives
        problem = checker_error(path)
        if problem is not None and not force:
            raise InputError(f"{path}: invalid model: {problem}")
    if problem is not None:
        log.warning("%s: invalid model, trying anyway (--force): %s", path, problem)
    return model, problem


def check_file(path: str) -> None:
    """The checks of `load_input` for a file that is not loaded here (verify and bench hand it
    to onnxruntime): InputError on any of them."""
    problem, external = _check_file(path)
    if external:
        problem = checker_error(path)
    if problem is not None:
        raise InputError(f"{path}: invalid model: {problem}")


def _check_file(path: str) -> tuple[str | None, bool]:
    """(checker message or None, has external data). A file that does not parse passes: the
    loader says what is wrong with it. The checker runs here only without external data."""
    import onnx

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return None, False
    if not proto.graph.node and not proto.graph.output:
        return None, False  # not a model: the loader says so
    refuse_unreadable(path, proto)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(proto))
    del proto
    return (None if external else checker_error(path)), external


def refuse_unreadable(path: str, proto) -> None:
    """InputError for what the ONNX checker accepts but spa_nm cannot read."""
    import onnx

    sparse = [
        (t.values.name or "?") for g in _graphs(proto) for t in g.sparse_initializer
    ] + [
        (n.name or n.op_type)
        for g in _graphs(proto)
        for n in g.node
        for a in n.attribute
        if a.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS)
    ]
    if sparse:
        raise InputError(f"{path}: sparse tensors are not supported ({', '.join(map(str, sparse[:3]))})")
    for what, value in _names(proto):
        if isinstance(value, bytes):
            raise InputError(f"{path}: invalid model: {what} {value!r} is not valid UTF-8")
    for g in _graphs(proto):
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    raise InputError(f"{path}: invalid model: {vi.name!r} has a negative dimension ({d.dim_value})")
    for t in _tensors(proto):
        why = _tensor_problem(t)
        if why:
            raise InputError(f"{path}: invalid model: tensor {t.name!r} {why}")


def _graphs(proto) -> Iterator[Any]:
    import onnx

    todo = [proto.graph]
    todo += [f for f in proto.functions]  # FunctionProto: nodes, no initializers
    while todo:
        g = todo.pop()
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    todo.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    todo.extend(a.graphs)


def _names(proto) -> Iterator[tuple[str, Any]]:
    """Every name-like string field; the protobuf runtime hands back bytes for invalid UTF-8."""
    yield "producer name", proto.producer_name
    for o in proto.opset_import:
        yield "opset domain", o.domain
    for p in proto.metadata_props:
        yield "metadata key", p.key
        yield "metadata value", p.value
    for g in _graphs(proto):
        yield "graph name", g.name
        for vi in (*getattr(g, "value_info", ()), *g.input, *g.output):
            yield "value name", vi if isinstance(vi, str | bytes) else vi.name
        for t in getattr(g, "initializer", ()):
            yield "initializer name", t.name
        for n in g.node:
            yield "node name", n.name
            yield "op type", n.op_type
            yield "op domain", n.domain
            for v in (*n.input, *n.output):
                yield "value name", v
            for a in n.attribute:
                yield "attribute name", a.name


def _tensors(proto) -> Iterator[Any]:
    import onnx

    for g in _graphs(proto):
        yield from getattr(g, "initializer", ())
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors


# bits per element of the sub-byte types (packed in raw data)
_SUB_BYTE = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


def _tensor_problem(t) -> str | None:
    """Why the tensor's own data does not fit its dims and type (None: it fits, or it cannot
    tell: strings, external data, unusual types). The checker refuses too little data, not too
    much."""
    import onnx

    if any(d < 0 for d in t.dims):
        return f"has a negative dimension ({min(t.dims)})"
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
        return None
    n = math.prod(t.dims)
    name = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() else ""
    bits = _SUB_BYTE.get(name)
    if bits is None:
        try:
            bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            return None
    if t.HasField("raw_data"):
        need, have = math.ceil(n * bits / 8), len(t.raw_data)
        if have > need:
            return f"holds {have} bytes of raw data; its shape and type need {need}"
        return None
    if bits < 8:
        return None
    try:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
    except Exception:
        return None
    need = n * (2 if name.startswith("COMPLEX") else 1)
    have = len(getattr(t, field))
    if have > need:
        return f"holds {have} values in {field}; its shape needs {need}"
    return None
