"""Write a trained `OnnxModule`'s values back into its ONNX graph.

The result is a copy of the input model (`spa_nm.api.copy_model`) in which only tensor values
change: initializers and the ``value`` of weight-holding Constant nodes, each in its original
dtype (a Constant's ``value_floats`` / ``value_float`` form is kept). Nodes, names, opsets, IR
version, metadata and doc strings are the input's. A tensor whose value did not change keeps its
original object, so unchanged external-data tensors stay external.

What is written, per ONNX name: each parameter, passed through its ``weight_transforms`` entry
(so the ONNX model computes what the module's forward computes), then multiplied by
``masks[name]`` (0/1; masked entries become exact +0.0); and each float buffer (running
statistics a train-mode pass updated).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir
import torch  # noqa: TID253 - spa_nm.train.writeback is only imported by write_back

from spa_nm.api import copy_model
from spa_nm.errors import ConfigError

if TYPE_CHECKING:
    from spa_nm.train.interp import OnnxModule

__all__ = ["write_back"]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = f"u{a.dtype.itemsize}"
    return bool(np.array_equal(a.reshape(-1).view(u), b.reshape(-1).view(u)))


def _constant_nodes(model: ir.Model) -> dict[str, ir.Node]:
    """Constant nodes of every graph scope (If branches included) by output name."""
    return {
        n.outputs[0].name: n
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
    }


def _initializers(model: ir.Model) -> dict[str, ir.Value]:
    """Initializers of every graph scope by name."""
    out = dict(model.graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                out.update(attr.value.initializers)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    out.update(g.initializers)
    return out


def _current(model: ir.Model, consts: dict[str, ir.Node], name: str) -> np.ndarray | None:
    v = _initializers(model).get(name)
    if v is not None and v.const_value is not None:
        return np.asarray(v.const_value.numpy())
    node = consts.get(name)
    if node is None:
        return None
    for key, attr in node.attributes.items():
        if key == "value":
            return np.asarray(attr.value.numpy())
        if key in ("value_float", "value_floats"):
            return np.asarray(attr.value, dtype=np.float32).reshape(
                () if key == "value_float" else -1
            )
    return None


def _trained_values(module: OnnxModule, apply_transforms: bool) -> dict[str, np.ndarray]:
    values = {}
    tf = module.weight_transforms if apply_transforms else {}
    with torch.no_grad():
        for name, p in module.onnx_parameters().items():
            values[name] = _to_numpy(tf[name](p) if name in tf else p)
        for name, b in module.onnx_buffers().items():
            values[name] = _to_numpy(b)
    return values


def _set_value(model: ir.Model, consts: dict[str, ir.Node], name: str, arr: np.ndarray) -> None:
    v = _initializers(model).get(name)
    if v is not None:
        old = v.const_value
        v.const_value = ir.Tensor(arr, name=name, doc_string=getattr(old, "doc_string", None))
        return
    node = consts[name]
    for key, attr in list(node.attributes.items()):
        if key == "value":
            old = attr.value
            new = ir.Tensor(arr, name=old.name, doc_string=old.doc_string)
            node.attributes["value"] = ir.AttrTensor("value", new, doc_string=attr.doc_string)
        elif key == "value_floats":
            node.attributes[key] = ir.AttrFloat32s(key, [float(x) for x in arr.reshape(-1)])
        elif key == "value_float":
            node.attributes[key] = ir.AttrFloat32(key, float(arr.reshape(())))


def write_back(
    model: ir.Model | onnx.ModelProto,
    module: OnnxModule,
    masks: Mapping[str, np.ndarray] | None = None,
    *,
    apply_transforms: bool = True,
) -> ir.Model:
    """A copy of ``model`` holding ``module``'s trained values (see the module doc).

    ``masks`` maps ONNX weight names to 0/1 arrays of the weight's shape. The input model is not
    modified; save the result with `spa_nm.save` (atomic; pass ``external_data=True`` to keep
    weights beside the model when every external tensor was retrained).

    Raises:
        ConfigError: a mask for an unknown name, of the wrong shape or not 0/1; or a module
            whose tensors do not fit this model (built from another one).
    """
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    where = getattr(module, "source", None) or model.graph.name or "<model>"
    values = _trained_values(module, apply_transforms)
    consts = _constant_nodes(model)
    masks = dict(masks or {})
    # validate everything before writing anything
    originals = {}
    for name, arr in values.items():
        cur = _current(model, consts, name)
        if cur is None:
            raise ConfigError(f"{where}: the module's tensor {name!r} is not in this model")
        if cur.shape != arr.shape:
            raise ConfigError(
                f"{where}: {name!r} has shape {list(arr.shape)} in the module but "
                f"{list(cur.shape)} in the model (module built from another model?)"
            )
        originals[name] = cur
    for name, mask in masks.items():
        if name not in values:
            raise ConfigError(f"{where}: mask for {name!r}, which is not a weight of this module")
        m = np.asarray(mask)
        if m.shape != values[name].shape:
            raise ConfigError(
                f"{where}: mask for {name!r} has shape {list(m.shape)}, the weight {list(values[name].shape)}"
            )
        if not np.isin(m, (0, 1)).all():
            raise ConfigError(f"{where}: mask for {name!r} holds values other than 0 and 1")
    out = copy_model(model)
    out_consts = _constant_nodes(out)
    for name, arr in values.items():
        cur = originals[name]
        arr = np.asarray(arr).astype(cur.dtype, copy=False)
        if name in masks:
            arr = np.where(np.asarray(masks[name]) != 0, arr, np.zeros((), cur.dtype)).astype(
                cur.dtype
            )
        if _same_bits(arr, cur):
            continue  # untouched: keep the original tensor (and its external-data location)
        _set_value(out, out_consts, name, np.ascontiguousarray(arr))
    return out
