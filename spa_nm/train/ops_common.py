"""Helpers shared by the torch op families: dtype tables and reading shape-like inputs.

Only imported by `spa_nm.train.interp` (itself imported lazily by ``to_torch``), so the
module-level torch import never runs on ``import spa_nm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch

__all__ = [
    "NP_TO_TORCH",
    "ONNX_TO_TORCH",
    "as_tensor",
    "axis",
    "floats",
    "ints",
    "unidirectional",
]

# TensorProto.DataType code -> torch dtype (STRING and the float8/4-bit types have none)
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    4: torch.uint16,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    12: torch.uint32,
    13: torch.uint64,
    16: torch.bfloat16,
}

NP_TO_TORCH: dict[np.dtype, torch.dtype] = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.uint16): torch.uint16,
    np.dtype(np.uint32): torch.uint32,
    np.dtype(np.uint64): torch.uint64,
    np.dtype(np.bool_): torch.bool,
}


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A writable torch copy of a numpy array (bfloat16 arrives as ml_dtypes, kept as such)."""
    a = np.asarray(arr)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def ints(t: torch.Tensor | np.ndarray | Sequence[int] | None) -> list[int]:
    """A shape-like input as a list of Python ints (a CPU tensor reads without a sync)."""
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(t).reshape(-1).tolist()]


def floats(t: torch.Tensor | np.ndarray | None) -> list[float]:
    """A float input (scales) as a list of Python floats."""
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [float(v) for v in t.reshape(-1).tolist()]
    return [float(v) for v in np.asarray(t).reshape(-1).tolist()]


def axis(a: int, rank: int) -> int:
    """A possibly negative ONNX axis made non-negative."""
    return a + rank if a < 0 else a


def unidirectional(t: torch.Tensor, rank: int) -> torch.Tensor:
    """``t`` viewed with leading 1s up to ``rank`` dims (ONNX unidirectional broadcasting)."""
    return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) if t.dim() < rank else t
