"""Group-level importance criteria (METHODS.md §1.5, §1.6).

A group's score for unit c aggregates the per-slice scores of every member slice of c
(producer rows, consumer columns, norm scales; biases and running statistics are left out
because their scale differs). Higher means more important.

- ``l1``: Σ|θ| per slice; ``l2``: Σθ² per slice (the squared L2 norm);
- ``bn``: Σ|γ| over the group's norm scales (network slimming); a group without a norm scale
  falls back to ``l2`` and the report says so;
- ``random``: i.i.d. U(0, 1), seeded: a baseline.

Aggregation over slices: ``sum`` (default), ``mean`` or ``max``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.facts import Role
from spa_nm.graph import ChannelGroup, DependencyGraph

__all__ = ["AGGREGATIONS", "CRITERIA", "score_group"]

AGGREGATIONS = ("sum", "mean", "max")
_WEIGHT_LIKE = (Role.WEIGHT_OUT, Role.WEIGHT_IN, Role.NORM_SCALE)


def _slice_scores(
    dg: DependencyGraph,
    group: ChannelGroup,
    roles,
    fn: Callable[[np.ndarray], np.ndarray],
    agg: str,
) -> tuple[np.ndarray, bool]:
    """Aggregate fn(slice) over member slices with ``roles``; returns (scores, any_slices)."""
    n = group.size
    total = np.zeros(n)
    count = np.zeros(n)
    best = np.full(n, -np.inf)
    seen = set()
    for p in group.params:
        key = (p.name, p.axis)
        if p.role not in roles or key in seen:
            continue
        seen.add(key)
        with np.errstate(all="ignore"):  # corrupt weights (inf, nan) rank last, quietly
            arr = np.asarray(dg.view.const(p.name), dtype=np.float64)
            moved = np.moveaxis(arr, p.axis, 0).reshape(arr.shape[p.axis], -1)
            per_index = np.nan_to_num(fn(moved).sum(axis=1), nan=np.inf, posinf=np.inf)
        units = np.searchsorted(group.units, dg.elements(p.param_slot))
        np.add.at(total, units, per_index)
        np.add.at(count, units, 1)
        np.maximum.at(best, units, per_index)
    if not seen:
        return total, False
    if agg == "sum":
        return total, True
    if agg == "mean":
        return total / np.maximum(count, 1), True
    return np.where(np.isfinite(best), best, 0.0), True


def l1(dg, group, agg="sum", rng=None):
    return _slice_scores(dg, group, _WEIGHT_LIKE, np.abs, agg)[0], None


def l2(dg, group, agg="sum", rng=None):
    return _slice_scores(dg, group, _WEIGHT_LIKE, np.square, agg)[0], None


def bn(dg, group, agg="sum", rng=None):
    scores, any_scale = _slice_scores(dg, group, (Role.NORM_SCALE,), np.abs, agg)
    if not any_scale:
        return l2(dg, group, agg)[0], "no norm scale in group: fell back to l2"
    return scores, None


def random(dg, group, agg="sum", rng=None):
    rng = rng if rng is not None else np.random.default_rng(0)
    return rng.random(group.size), None


CRITERIA: dict[str, Callable] = {"l1": l1, "l2": l2, "bn": bn, "random": random}


def score_group(
    dg: DependencyGraph, group: ChannelGroup, criterion: str, agg: str = "sum", rng=None
) -> tuple[np.ndarray, str | None]:
    """Scores of ``group.units`` (same order) and an optional note for the report."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if agg not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {agg!r}; choose from {', '.join(AGGREGATIONS)}")
    return CRITERIA[criterion](dg, group, agg, rng)
