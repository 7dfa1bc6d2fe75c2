"""From the user's intent (`PruneConfig`) to the exact units to remove (`PrunePlan`).

METHODS.md §1.6: local ratios remove ⌊R·|G|⌋ units per group, lowest score first; ``global``
ranks scores normalized by their group mean across every prunable group. ``round_to`` keeps the
number of surviving units a multiple of K (never zero); a slot is never emptied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.graph import ChannelGroup, DependencyGraph
from spa_nm.importance import score_group

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

    @property
    def n_removed(self) -> int:
        return int(sum(v.size for v in self.removed.values()))


def make_plan(dg: DependencyGraph, cfg: PruneConfig) -> PrunePlan:
    plan = PrunePlan(cfg)
    if cfg.ratio == 0:
        return plan
    rng = np.random.default_rng(cfg.seed)
    groups = dg.prunable_groups
    scores: dict[int, np.ndarray] = {}
    for g in groups:
        s, note = score_group(dg, g, cfg.criterion, cfg.aggregation, rng)
        scores[g.id] = s
        if note:
            plan.notes.append(f"group {g.id}: {note}")
    if cfg.global_ranking:
        counts = _global_counts(groups, scores, cfg.ratio)
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
    return plan


def _global_counts(groups: list[ChannelGroup], scores, ratio: float) -> dict[int, int]:
    entries = []
    for g in groups:
        s = scores[g.id]
        mean = float(np.mean(s)) if s.size else 0.0
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
