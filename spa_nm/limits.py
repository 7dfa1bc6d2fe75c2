"""Bounds on what spa_nm computes from a model's own numbers (docs/security.md).

A model file is untrusted: a few bytes can declare a tensor of 10^12 elements, a ConstantOfShape
of ``[100000, 100000]`` or a Range to 10^9. Every place that materializes a tensor whose size
comes from the model asks here first, with the size worked out in Python ints (no int64
overflow) before anything is allocated; what is over a bound stays symbolic.

One setting: ``SPA_NM_FOLD_LIMIT_MB`` (environment; default 64) is the largest tensor, in MiB,
that constant folding materializes. The folded tensors of one model are bounded by
`FOLD_TOTAL_FACTOR` times that.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from spa_nm.errors import ConfigError

__all__ = [
    "FOLD_LIMIT_ENV",
    "FOLD_TOTAL_FACTOR",
    "INT64_MAX",
    "PROPAGATION_ELEMENTS",
    "PROPAGATION_VALUE",
    "SHAPE_DATA_ELEMENTS",
    "fold_limit",
    "fold_total",
    "numel",
    "show_bytes",
    "show_count",
]

FOLD_LIMIT_ENV = "SPA_NM_FOLD_LIMIT_MB"
_DEFAULT_FOLD_MB = 64
FOLD_TOTAL_FACTOR = 8  # the folded tensors of one model together: 8 x the per-tensor limit

INT64_MAX = 2**63 - 1

# the largest constant kept as shape data (a folded shape vector, the symbolic inference's
# values of a fill): shape arithmetic never needs more
SHAPE_DATA_ELEMENTS = 4096

# ONNX shape inference with data propagation holds each shape-vector element as one protobuf
# message (~100 bytes): at most this many elements in all, and per value, on one pass
PROPAGATION_ELEMENTS = 1 << 21
PROPAGATION_VALUE = 1 << 20


def fold_limit() -> int:
    """The largest tensor (bytes) constant folding may materialize: ``SPA_NM_FOLD_LIMIT_MB``
    MiB, 64 by default.

    Raises:
        ConfigError: the variable is set to something other than a non-negative number.
    """
    raw = os.environ.get(FOLD_LIMIT_ENV, "").strip()
    if not raw:
        return _DEFAULT_FOLD_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not (math.isfinite(mb) and mb >= 0):
        raise ConfigError(f"{FOLD_LIMIT_ENV} must be a number of MiB >= 0, got {raw!r}")
    return int(mb * (1 << 20))


def fold_total() -> int:
    """The most bytes constant folding may materialize for one model, all tensors together."""
    return FOLD_TOTAL_FACTOR * fold_limit()


def numel(dims: Iterable) -> int | None:
    """The number of elements of a tensor of shape ``dims``, as a Python int (never
    overflows); None when a dim is not a non-negative integer (symbolic, unknown, negative)."""
    out = []
    for d in dims:
        if isinstance(d, bool) or not hasattr(d, "__index__"):
            return None
        d = d.__index__()
        if d < 0:
            return None
        out.append(d)
    return math.prod(out)


_UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def show_bytes(n: int) -> str:
    """``n`` bytes for a message: ``4 bytes``, ``64 MB``, ``4 TB``, ``3.7e+19 bytes``."""
    if n < 1000:
        return f"{n} bytes"
    k = min(int(math.log10(n) // 3), len(_UNITS) - 1)
    if k == len(_UNITS) - 1 and n >= 1000 ** (k + 1):
        return f"{float(n):.2g} bytes"
    v = n / 1000**k
    return f"{v:.3g} {_UNITS[k]}"


def show_count(n: int) -> str:
    """An element count for a message: exact below a million, ``10^12`` for a power of ten,
    ``4.6e+18`` otherwise."""
    if n < 10**6:
        return str(n)
    e = len(str(n)) - 1
    if n == 10**e:
        return f"10^{e}"
    return f"{float(n):.3g}"
