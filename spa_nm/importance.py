"""Group-level importance criteria (METHODS.md §1.5, §1.6).

A group's score for unit c aggregates the per-slice scores of every member slice of c
(producer rows, consumer columns, norm scales; biases and running statistics are left out
because their scale differs). Higher means more important.

- ``l1``: Σ|θ| per slice; ``l2``: Σθ² per slice (the squared L2 norm);
- ``bn``: Σ|γ| over the group's norm scales (network slimming); a group without a norm scale
  falls back to ``l2`` and the report says so;
- ``random``: i.i.d. U(0, 1), seeded: a baseline;
- ``fpgm``: with f_c = vec(W_p[c, ...]) the rows of unit c in producer p (every row the unit
  owns, e.g. all m rows of a depthwise multiplier), the mean distance Σ_{c'} ‖f_c − f_{c'}‖₂ /
  (n_p − 1) to the other units of the same producer (He et al. 2019, "geometric median"):
  units near the median are redundant and go first; a duplicated filter scores lowest. Per
  producer slice, then aggregated over the group's producers (sum / mean / max). Mean rather
  than sum over c' so that the producers of a Concat (with different unit counts) weigh alike;
- ``lamp``: LAMP (Lee et al., ICLR 2021) lifted to groups by treating the group as the
  "layer": I(c) = the group's ``l2`` score of unit c (aggregated over member slices), then
  sorted ascending, LAMP(c) = I(c) / Σ_{c' at or after c in that order} I(c'). This is the
  LAMP normaliser of METHODS.md §1.6: inside a group it keeps the ``l2`` order (local pruning
  equals ``l2``), every group's strongest unit scores exactly 1, and the scores are comparable
  across groups, so ``--global`` ranks them as they are (no mean normalisation);
- ``obspa``: group-OBS reconstruction error with compensation (METHODS.md §1.7, our
  reconstruction); see `spa_nm.obspa`. Also ranked globally without mean normalisation.
- ``taylor``, ``hessian``, ``snip``: data-driven, from gradients of the loss on given batches
  (or the §1.5 substitute); see `spa_nm.datadriven` (torch, imported lazily).

Aggregation over slices: ``sum`` (default), ``mean`` or ``max``.

`make_scorer` returns a per-group scorer; criteria that need the whole model first (``obspa``:
Hessians from one onnxruntime run) prepare once there and may carry a ``finish(plan)`` step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.facts import Role
from spa_nm.graph import ChannelGroup, DependencyGraph

__all__ = ["AGGREGATIONS", "CRITERIA", "DATA_DRIVEN", "SELF_NORMALIZED", "Scorer", "make_scorer", "score_group"]

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


def fpgm(dg, group, agg="sum", rng=None):
    """Mean distance of each unit's producer filters to the other units' (module docstring)."""
    per_slice = []
    seen = set()
    for p in group.params:
        key = (p.name, p.axis)
        if p.role != Role.WEIGHT_OUT or key in seen:
            continue
        seen.add(key)
        arr = np.asarray(dg.view.const(p.name), dtype=np.float64)
        rows = np.moveaxis(arr, p.axis, 0).reshape(arr.shape[p.axis], -1)
        rows = np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
        pos = np.searchsorted(group.units, dg.elements(p.param_slot))
        present = np.unique(pos)
        # f_c: every row of the unit, concatenated in row order (equal counts per unit)
        counts = np.bincount(pos, minlength=group.size)[present]
        if present.size < 2 or np.any(counts != counts[0]):
            continue
        f = rows[np.argsort(pos, kind="stable")].reshape(present.size, -1)
        sq = np.einsum("ij,ij->i", f, f)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (f @ f.T), 0.0)
        np.fill_diagonal(d2, 0.0)
        score = np.zeros(group.size)
        score[present] = np.sqrt(d2).sum(axis=1) / (present.size - 1)
        per_slice.append((present, score))
    if not per_slice:
        return l2(dg, group, agg)[0], "no producer with equal rows per unit: fell back to l2"
    stack = np.stack([s for _, s in per_slice])
    if agg == "sum":
        return stack.sum(axis=0), None
    if agg == "mean":
        count = np.zeros(group.size)
        for present, _ in per_slice:
            count[present] += 1
        return stack.sum(axis=0) / np.maximum(count, 1), None
    return stack.max(axis=0), None


def lamp_normalize(scores: np.ndarray) -> np.ndarray:
    """LAMP: s(u) / Σ_{v ≥ u} s(v) over the ascending order (ties broken by position)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    tail = np.cumsum(s[order][::-1])[::-1]  # Σ of the unit and every larger one
    out = np.zeros_like(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[order] = np.where(tail > 0, s[order] / tail, 0.0)
    return out


def lamp(dg, group, agg="sum", rng=None):
    return lamp_normalize(l2(dg, group, agg)[0]), None


def _obspa(dg, group, agg="sum", rng=None):
    """One group with the default proxy (`make_scorer` shares the Hessians across groups)."""
    return make_scorer(dg, "obspa", agg, rng)(group)


def _gradient(name: str) -> Callable:
    def score(dg, group, agg="sum", rng=None):
        """One group with default options (`make_scorer` shares the gradients across groups)."""
        return make_scorer(dg, name, agg, rng)(group)

    return score


CRITERIA: dict[str, Callable] = {
    "l1": l1,
    "l2": l2,
    "bn": bn,
    "random": random,
    "fpgm": fpgm,
    "lamp": lamp,
    "obspa": _obspa,
    "taylor": _gradient("taylor"),
    "hessian": _gradient("hessian"),
    "snip": _gradient("snip"),
}
# criteria that need gradients (spa_nm.datadriven; torch): options are a GradientOptions
DATA_DRIVEN = ("taylor", "hessian", "snip")
# scores already comparable across groups: global ranking uses them without mean normalisation
SELF_NORMALIZED = frozenset({"lamp", "obspa"})


class Scorer(Protocol):
    """Scores of one group's units (higher = more important) and an optional report note."""

    self_normalized: bool

    def __call__(self, group: ChannelGroup) -> tuple[np.ndarray, str | None]: ...


@dataclass
class _Simple:
    dg: DependencyGraph
    fn: Callable
    agg: str
    rng: Any
    self_normalized: bool

    def __call__(self, group: ChannelGroup) -> tuple[np.ndarray, str | None]:
        return self.fn(self.dg, group, self.agg, self.rng)


def make_scorer(
    dg: DependencyGraph, criterion: str, agg: str = "sum", rng=None, options: Any = None
) -> Scorer:
    """A scorer for every group of ``dg``; ``options`` configures ``obspa`` (an
    `spa_nm.obspa.ObspaOptions`) or ``taylor`` / ``hessian`` / ``snip`` (a
    `spa_nm.datadriven.GradientOptions`); None: the defaults."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if agg not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {agg!r}; choose from {', '.join(AGGREGATIONS)}")
    if criterion == "obspa":
        from spa_nm.obspa import ObspaScorer

        return ObspaScorer(dg, options)
    if criterion in DATA_DRIVEN:
        from spa_nm.datadriven import GradientScorer

        return GradientScorer(dg, criterion, agg, options)
    return _Simple(dg, CRITERIA[criterion], agg, rng, criterion in SELF_NORMALIZED)


def score_group(
    dg: DependencyGraph, group: ChannelGroup, criterion: str, agg: str = "sum", rng=None
) -> tuple[np.ndarray, str | None]:
    """Scores of ``group.units`` (same order) and an optional note for the report."""
    return make_scorer(dg, criterion, agg, rng)(group)
