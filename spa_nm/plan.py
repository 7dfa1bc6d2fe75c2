"""From the user's intent (`PruneConfig`) to the exact units to remove (`PrunePlan`).

METHODS.md §1.6: local ratios remove ⌊R·|G|⌋ units per group, lowest score first; ``global``
ranks scores normalized by their group mean across every prunable group. ``round_to`` keeps the
number of surviving units a multiple of K (never zero); a slot is never emptied.

``groups`` restricts a plan to the listed group ids (the others keep every unit): the per-group
sensitivity scan prunes one group at a time with it. A criterion may finish a plan: ``obspa``
adds compensated consumer weights (``updates``, ``new_biases``) that surgery writes before it
slices, and its report (``details``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.graph import ChannelGroup, DependencyGraph
from spa_nm.importance import make_scorer

__all__ = ["DEFAULT_ROUND_TO", "PruneConfig", "PrunePlan", "make_plan"]


# Default survivor multiple. Measured (bench, onnxruntime CPU, 1 thread, global ranking at 0.5):
# with round_to=1 MobileNetV2/V3 and ShuffleNetV2 ran 1.2-1.4x SLOWER than dense (odd channel
# counts leave the blocked NCHWc conv kernels); with 8 they ran 1.2-1.4x faster. 4 and 16 were
# close to 8 on two of three models.
DEFAULT_ROUND_TO = 8


@dataclass(frozen=True)
class PruneConfig:
    ratio: float
    criterion: str = "l2"
    global_ranking: bool = False
    round_to: int = DEFAULT_ROUND_TO
    ignore: tuple[str, ...] = ()
    aggregation: str = "sum"
    seed: int = 0
    groups: tuple[int, ...] | None = None  # only these group ids (None: every prunable group)
    obspa: Any = None  # spa_nm.obspa.ObspaOptions for criterion "obspa" (None: defaults)

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, int | float) and 0 <= self.ratio < 1) or math.isnan(
            self.ratio
        ):
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")
        if int(self.round_to) < 1:
            raise ConfigError(f"round-to must be a positive integer, got {self.round_to}")


@dataclass
class PrunePlan:
    config: PruneConfig
    removed: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> unit labels
    notes: list[str] = field(default_factory=list)
    # written by surgery before slicing (OBSPA compensation, METHODS.md §1.7):
    updates: dict[str, np.ndarray] = field(default_factory=dict)  # initializer -> new array
    new_biases: dict[int, np.ndarray] = field(default_factory=dict)  # node index -> bias
    details: dict[str, Any] = field(default_factory=dict)  # the criterion's own report

    @property
    def n_removed(self) -> int:
        return int(sum(v.size for v in self.removed.values()))


def make_plan(dg: DependencyGraph, cfg: PruneConfig) -> PrunePlan:
    plan = PrunePlan(cfg)
    if cfg.ratio == 0:
        return plan
    rng = np.random.default_rng(cfg.seed)
    groups = _selected(dg, cfg)
    scorer = make_scorer(dg, cfg.criterion, cfg.aggregation, rng, cfg.obspa)
    scores: dict[int, np.ndarray] = {}
    for g in groups:
        s, note = scorer(g)
        scores[g.id] = s
        if note:
            plan.notes.append(f"group {g.id}: {note}")
    if cfg.global_ranking:
        counts = _global_counts(groups, scores, cfg.ratio, scorer.self_normalized)
    else:
        counts = {g.id: int(math.floor(cfg.ratio * g.size)) for g in groups}
    for g in groups:
        k = _rounded_removal(g.size, counts[g.id], cfg.round_to)
        if k <= 0:
            continue
        order = np.lexsort((g.units, scores[g.id]))  # lowest score first, ties by label
        chosen = order[:k]
        chosen = _never_empty(dg, g, chosen, order)
        if chosen.size:
            plan.removed[g.id] = np.sort(g.units[chosen])
    finish = getattr(scorer, "finish", None)
    if finish is not None and plan.removed:
        finish(plan)
    return plan


def _selected(dg: DependencyGraph, cfg: PruneConfig) -> list[ChannelGroup]:
    """The prunable groups the plan may touch: all, or those of ``cfg.groups``."""
    if cfg.groups is None:
        return dg.prunable_groups
    ids = {g.id: g for g in dg.groups}
    for gid in cfg.groups:
        if gid not in ids:
            raise ConfigError(f"no channel group {gid} (the model has {len(ids)})")
        if not ids[gid].prunable:
            b = ids[gid].blocked
            why = b[0].reason if b else "fewer than two channels or no producer"
            raise ConfigError(f"channel group {gid} is not prunable: {why}")
    return [ids[gid] for gid in sorted(set(cfg.groups))]


def _global_counts(
    groups: list[ChannelGroup], scores, ratio: float, self_normalized: bool = False
) -> dict[int, int]:
    entries = []
    for g in groups:
        s = scores[g.id]
        mean = float(np.mean(s)) if s.size else 0.0
        if self_normalized:  # LAMP, OBSPA: already comparable across groups (§1.6)
            norm = np.asarray(s, dtype=np.float64)
        else:
            norm = s / mean if mean > 0 else np.zeros_like(s)
        for v in norm:
            entries.append((float(v), g.id))
    total = len(entries)
    target = int(math.floor(ratio * total))
    entries.sort(key=lambda e: e[0])
    counts = {g.id: 0 for g in groups}
    cap = {g.id: g.size - 1 for g in groups}
    for _, gid in entries:
        if target <= 0:
            break
        if counts[gid] < cap[gid]:
            counts[gid] += 1
            target -= 1
    return counts


def _rounded_removal(n: int, k: int, round_to: int) -> int:
    """Units to remove so that n - k survivors is a multiple of round_to (and at least 1)."""
    k = max(0, min(k, n - 1))
    keep = n - k
    if round_to > 1 and n > round_to:
        keep = min(n, int(math.ceil(keep / round_to)) * round_to)
    return n - max(keep, 1)


def _never_empty(
    dg: DependencyGraph, g: ChannelGroup, chosen: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Give back the best unit of any slot that the choice would empty."""
    chosen_set = set(chosen.tolist())
    pos = {int(u): i for i, u in enumerate(order)}  # rank of each unit position
    for s in g.slots:
        units = np.searchsorted(g.units, np.unique(dg.elements(s)))
        if all(int(u) in chosen_set for u in units):
            best = max(units, key=lambda u: pos[int(u)])
            chosen_set.discard(int(best))
    return np.array(sorted(chosen_set, key=lambda u: pos[u]), dtype=np.int64)
