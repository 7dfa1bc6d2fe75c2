"""OBSPA's options and constants (METHODS.md §1.7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa_nm.errors import ConfigError

HESSIANS = ("synthetic", "bn", "data", "identity")
# Measured (tests/test_obspa.py zoo comparison, ratio 0.3, no fine-tuning; numbers in the
# commit message and the report): synthetic beat bn on every model tried, because bn's
# independence assumption ignores the correlations that the compensation feeds on, and most
# exported models fold BatchNorm into the Conv (bn then falls back to synthetic anyway).
DEFAULT_HESSIAN = "synthetic"
MAX_STEPS = 32  # greedy batches per group (one unit per step when fewer units are removed)


@dataclass(frozen=True)
class ObspaOptions:
    """How OBSPA builds its Hessians (METHODS.md §1.7). ``data``: a calibration .npz."""

    hessian: str = DEFAULT_HESSIAN
    data: str | None = None
    damp: float = 0.01
    samples: int = 32  # synthetic/data inputs run through the model
    seed: int = 0
    max_cols: int = 8192  # larger consumers (Hessian > 0.5 GB) are not compensated
    rescore: bool = True  # greedy re-scoring before each batch (False: initial order)

    def __post_init__(self) -> None:
        if self.hessian not in HESSIANS:
            raise ConfigError(
                f"unknown hessian {self.hessian!r}; choose from {', '.join(HESSIANS)}"
            )
        if (self.hessian == "data") != (self.data is not None):
            raise ConfigError("hessian 'data' needs a calibration .npz, and only it takes one")
        if not (self.damp >= 0 and math.isfinite(self.damp)):
            raise ConfigError(f"damp must be a finite number >= 0, got {self.damp}")
        if int(self.samples) < 1:
            raise ConfigError(f"samples must be positive, got {self.samples}")

    @classmethod
    def make(
        cls, hessian: str | None = None, data: str | Path | None = None, **kw: Any
    ) -> ObspaOptions:
        """Options from user input: a calibration file alone means ``hessian="data"``."""
        if hessian is None:
            hessian = "data" if data is not None else DEFAULT_HESSIAN
        return cls(hessian, None if data is None else str(data), **kw)
