"""Training on ONNX models: the ONNX -> torch bridge and back.

    from spa_nm.train import to_torch, write_back, UnsupportedOpError
    mod = to_torch(model)                 # torch.nn.Module running model's graph
    mod.onnx_parameters()                 # {initializer name: nn.Parameter}
    mod.weight_transforms[name] = fn      # forward uses fn(param) for that weight
    outs = mod(x)                         # tuple in graph-output order
    new = write_back(model, mod, masks)   # a copy of model with the trained values

``import spa_nm.train`` does not import torch (``import spa_nm`` does not import this package
at all); torch is imported by the first call of `to_torch` or `write_back`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from spa_nm.train.registry import UnsupportedOpError

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

    from spa_nm.train.interp import OnnxModule

__all__ = ["UnsupportedOpError", "to_torch", "write_back"]


def to_torch(model: ir.Model | onnx.ModelProto, *, name: str | None = None) -> OnnxModule:
    """A trainable ``torch.nn.Module`` computing ``model``'s graph (see `spa_nm.train.interp`).

    Raises `UnsupportedOpError` (naming op, opset and node) for a node it cannot run.
    """
    from spa_nm.train.interp import to_torch as _to_torch

    return _to_torch(model, name=name)


def write_back(
    model: ir.Model | onnx.ModelProto,
    module: OnnxModule,
    masks: Mapping[str, np.ndarray] | None = None,
    *,
    apply_transforms: bool = True,
) -> ir.Model:
    """A copy of ``model`` with ``module``'s trained values, ``masks`` (0/1) multiplied in
    (see `spa_nm.train.writeback`)."""
    from spa_nm.train.writeback import write_back as _write_back

    return _write_back(model, module, masks, apply_transforms=apply_transforms)
