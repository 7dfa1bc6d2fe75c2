"""From the user's intent (`PruneConfig`) to the exact units to remove (`PrunePlan`).

METHODS.md §1.6: local ratios remove ⌊R·|G|⌋ units per group, lowest score first; ``global``
ranks scores normalized by their group mean across every prunable group. ``round_to`` keeps the
number of surviving units a multiple of K (never zero); a slot is never emptied.

``groups`` restricts a plan to the listed group ids (the others keep every unit): the per-group
sensitivity scan prunes one group at a time with it.

``ratio_for`` overrides the ratio of some groups: ``(pattern, ratio)`` pairs, each a glob over node
names (as ``ignore``) applied to every group that touches a matching node. Precedence: ``ignore``
first (an ignored group is never pruned), then the **last** matching pair, then ``ratio``. Under
``global_ranking`` the overridden groups are pruned locally at their own ratio and the others are
ranked globally at ``ratio``.

``sizes`` (iterative pruning, `spa_nm.iterative`): the original unit count of each group by
`group_key`. Ratios then count against those sizes: a group of original size n0 keeps
n0 − rounded(⌊R·n0⌋) units whatever it has lost in earlier rounds, so K rounds at cumulative
ratios R_1 < … < R_K = R end with the one-shot counts.

A criterion may finish a plan: ``obspa`` adds compensated consumer weights (``updates``,
``new_biases``) that surgery writes before it slices, and its report (``details``); the gradient
criteria add where their data came from (``details``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.graph import ChannelGroup, DependencyGraph
from spa_nm.importance import make_scorer

__all__ = ["DEFAULT_ROUND_TO", "PruneConfig", "PrunePlan", "group_key", "group_ratios", "make_plan"]


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
    gradient: Any = None  # spa_nm.datadriven.GradientOptions for taylor/hessian/snip
    ratio_for: tuple[tuple[str, float], ...] = ()  # (node-name glob, ratio); the last match wins
    sizes: Mapping[tuple[str, ...], int] | None = None  # original group sizes (iterative)

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "ratio")
        for pair in self.ratio_for:
            if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ConfigError(f"a ratio override is (pattern, ratio), got {pair!r}")
            _check_ratio(pair[1], f"ratio for {pair[0]!r}")
        if int(self.round_to) < 1:
            raise ConfigError(f"round-to must be a positive integer, got {self.round_to}")


def _check_ratio(r: Any, what: str) -> None:
    if not (isinstance(r, int | float) and 0 <= r < 1) or math.isnan(r):
        raise ConfigError(f"{what} must be in [0, 1), got {r}")


def group_key(g: ChannelGroup) -> tuple[str, ...]:
    """A name for a group that survives pruning: its member tensors (surgery keeps names)."""
    return tuple(sorted({p.name for p in g.params}))


def group_ratios(groups: list[ChannelGroup], cfg: PruneConfig) -> tuple[dict[int, float], set[int]]:
    """The ratio of each group and the ids whose ratio a ``ratio_for`` pair set."""
    ratios, overridden = {}, set()
    for g in groups:
        r = cfg.ratio
        for pat, pr in cfg.ratio_for:
            if any(fnmatch.fnmatchcase(name, pat) for name in g.nodes):
                r = float(pr)
                overridden.add(g.id)
        ratios[g.id] = r
    return ratios, overridden


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
    if cfg.ratio == 0 and not any(r for _, r in cfg.ratio_for):
        return plan
    rng = np.random.default_rng(cfg.seed)
    ratios, overridden = group_ratios(_selected(dg, cfg), cfg)
    groups = [g for g in _selected(dg, cfg) if ratios[g.id] > 0]
    if not groups:
        return plan
    options = cfg.obspa if cfg.criterion == "obspa" else cfg.gradient
    scorer = make_scorer(dg, cfg.criterion, cfg.aggregation, rng, options)
    scores: dict[int, np.ndarray] = {}
    for g in groups:
        s, note = scorer(g)
        scores[g.id] = s
        if note:
            plan.notes.append(f"group {g.id}: {note}")
    sizes = cfg.sizes or {}
    orig = {g.id: max(int(sizes.get(group_key(g), g.size)), g.size) for g in groups}
    counts = {
        g.id: _target_removal(g.size, orig[g.id], ratios[g.id], cfg.round_to)
        for g in groups
        if not cfg.global_ranking or g.id in overridden
    }
    if cfg.global_ranking:
        pool = [g for g in groups if g.id not in overridden]
        target = math.floor(cfg.ratio * sum(orig[g.id] for g in pool))
        target -= sum(orig[g.id] - g.size for g in pool)  # removed in earlier rounds
        glob = _global_counts(pool, scores, target, scorer.self_normalized)
        for g in pool:
            counts[g.id] = _rounded_removal(g.size, glob[g.id], cfg.round_to)
    for g in groups:
        k = counts[g.id]
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


def _target_removal(n: int, n0: int, ratio: float, round_to: int) -> int:
    """Units to remove now from a group of ``n`` units (originally ``n0``) so that it keeps
    what one-shot pruning at ``ratio`` keeps of ``n0``."""
    keep = n0 - _rounded_removal(n0, math.floor(ratio * n0), round_to)
    return max(0, min(n - keep, n - 1))


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
    groups: list[ChannelGroup], scores, target: int, self_normalized: bool = False
) -> dict[int, int]:
    """Remove the ``target`` lowest normalized scores over ``groups`` (one unit kept each)."""
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
