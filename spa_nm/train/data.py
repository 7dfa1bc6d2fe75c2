"""Training data for `spa_nm.train.finetune`: arrays from an .npz, checked against the model's inputs.

Two layouts are accepted:

* **by input name** (the documented one): one array per graph input, named like it, plus an
  optional ``labels`` array of integer class ids; the first axis is the sample axis.
* **METHODS.md §7 DATA.npz** (``x_train, y_train, x_val, y_val``), for a model with one input:
  ``x_*`` feed that input and ``y_*`` are the labels; the ``*_val`` arrays are the validation set.

Every check fails with one line naming the file (``InputError``, exit code 2). No torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import InputError

__all__ = ["Dataset", "load_arrays", "make_dataset", "model_inputs", "split"]

_NP = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.INT8: np.int8,
    ir.DataType.UINT8: np.uint8,
    ir.DataType.BOOL: np.bool_,
}


@dataclass
class Dataset:
    """Model inputs by graph-input name (sample axis first), optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, idx: np.ndarray) -> Dataset:
        """The samples at ``idx``."""
        labels = None if self.labels is None else self.labels[idx]
        return Dataset({k: v[idx] for k, v in self.inputs.items()}, labels, self.source)


def model_inputs(model: ir.Model) -> list[tuple[str, list[int | None], Any]]:
    """(name, dims with None for symbolic ones, numpy dtype) of each graph input that is not an
    initializer."""
    out = []
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        dims = (
            [d if isinstance(d, int) and d >= 0 else None for d in (v.shape or [])]
            if v.shape is not None
            else None
        )
        out.append((v.name, dims, _NP.get(v.dtype, np.float32)))
    return out


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles); InputError names the file otherwise."""
    from spa_nm.io import read_npz

    return read_npz(path)


def make_dataset(
    model: ir.Model, arrays: dict[str, np.ndarray], source: str, part: str = "train"
) -> Dataset:
    """Check ``arrays`` against the model's inputs and build the ``part`` ("train" or "val")
    dataset: every input present, ranks and static non-batch dims as declared, one sample count,
    labels 1-D non-negative integers."""
    specs = model_inputs(model)
    names = [n for n, _, _ in specs]
    if all(n in arrays for n in names):
        feeds = {n: arrays[n] for n in names}
        labels = arrays.get("labels")
        label_key = "labels"
    elif len(names) == 1 and f"x_{part}" in arrays:
        feeds = {names[0]: arrays[f"x_{part}"]}
        label_key = f"y_{part}"
        labels = arrays.get(label_key)
    else:
        missing = [n for n in names if n not in arrays]
        raise InputError(
            f"{source}: no array for model input(s) {', '.join(map(repr, missing))} (found: {', '.join(sorted(arrays)) or 'none'})"
        )
    counts = {n: (a.shape[0] if a.ndim else None) for n, a in feeds.items()}
    out: dict[str, np.ndarray] = {}
    for name, dims, dtype in specs:
        a = feeds[name]
        if dims is not None and a.ndim != len(dims):
            raise InputError(
                f"{source}: array {name!r} has shape {list(a.shape)}, the model input has rank {len(dims)} ({_fmt(dims)})"
            )
        if a.ndim == 0 or a.shape[0] == 0:
            raise InputError(f"{source}: array {name!r} has no samples (shape {list(a.shape)})")
        for ax, d in enumerate(dims or []):
            if ax and d is not None and a.shape[ax] != d:
                raise InputError(
                    f"{source}: array {name!r} has shape {list(a.shape)}, the model input is {_fmt(dims)}"
                )
        if np.issubdtype(dtype, np.floating):
            if not (
                np.issubdtype(a.dtype, np.floating)
                or np.issubdtype(a.dtype, np.integer)
                or a.dtype == np.bool_
            ):
                raise InputError(f"{source}: array {name!r} has dtype {a.dtype}, not numeric")
            a = a.astype(dtype, copy=False)
            if not np.all(np.isfinite(a)):
                raise InputError(f"{source}: array {name!r} contains NaN or infinity")
        elif a.dtype != dtype:
            if not np.issubdtype(a.dtype, np.integer) and dtype is not np.bool_:
                raise InputError(
                    f"{source}: array {name!r} has dtype {a.dtype}, the model input is {np.dtype(dtype)}"
                )
            a = a.astype(dtype)
        out[name] = np.ascontiguousarray(a)
    if len(set(counts.values())) > 1:
        raise InputError(f"{source}: arrays have different sample counts: {counts}")
    n = next(iter(counts.values()))
    if labels is not None:
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or _integral(labels)):
            raise InputError(
                f"{source}: {label_key!r} must be a 1-D array of integer class ids (got {labels.dtype}, shape {list(labels.shape)})"
            )
        if len(labels) != n:
            raise InputError(f"{source}: {label_key!r} has {len(labels)} entries for {n} samples")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise InputError(f"{source}: {label_key!r} has negative class ids")
    return Dataset(out, labels, source)


def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded random (stratified, when there are labels) train / validation split."""
    rng = np.random.default_rng(seed)
    n = len(ds)
    if ds.labels is None:
        idx = rng.permutation(n)
        k = max(1, round(val_fraction * n))
        val_idx = idx[:k]
    else:
        val_parts = []
        for c in np.unique(ds.labels):
            members = rng.permutation(np.flatnonzero(ds.labels == c))
            val_parts.append(members[: round(val_fraction * len(members))])
        val_idx = np.concatenate(val_parts)
        if not len(val_idx):
            val_idx = rng.permutation(n)[:1]
    if len(val_idx) >= n:
        raise InputError(
            f"{ds.source}: {n} sample(s) cannot be split into training and validation; pass a separate validation set"
        )
    mask = np.zeros(n, bool)
    mask[val_idx] = True
    return ds.subset(np.flatnonzero(~mask)), ds.subset(np.sort(val_idx))


def _integral(a: np.ndarray) -> bool:
    return (
        np.issubdtype(a.dtype, np.floating)
        and bool(np.all(np.isfinite(a)))
        and bool(np.all(a == np.round(a)))
    )


def _fmt(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
