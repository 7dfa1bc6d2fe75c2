"""Iterative pruning: the ratio R reached in K rounds, re-scoring each round (METHODS.md §1.8,
regime 2 "one-shot or iterative"; §1.6 for the counts).

Round k prunes the model left by round k − 1 to the cumulative ratio R_k of the schedule:

- ``geometric`` (default): R_k = 1 − (1 − R)^{k/K}, the same fraction of the *remaining*
  channels every round;
- ``linear``: R_k = R·k/K, the same number of channels every round.

Counts are taken against each group's **original** size (`spa_nm.plan`, ``sizes``): a group of
n0 units keeps n0 − rounded(⌊R_k·n0⌋) after round k, so the last round ends exactly where one-shot
pruning at R ends (same counts per group under local ranking; under ``--global`` the total is
⌊R·Σn0⌋ up to per-round rounding) and K = 1 is one-shot. Ratio overrides follow the same schedule
towards their own ratio. Scores are recomputed on the pruned (and fine-tuned) model of the
previous round, so ``obspa`` and the gradient criteria see the current weights.

With ``finetune_epochs`` > 0 the model is fine-tuned after every round (the last included) with
`spa_nm.train.finetune.finetune`, method ``dense``, on ``data``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from spa_nm.errors import ConfigError

__all__ = ["SCHEDULES", "cumulative_ratios", "prune_iterative"]

SCHEDULES = ("geometric", "linear")


def cumulative_ratios(ratio: float, steps: int, schedule: str = "geometric") -> list[float]:
    """R_1, …, R_K (R_K = ``ratio``) of the schedule.

    >>> [round(r, 4) for r in cumulative_ratios(0.75, 2)]
    [0.5, 0.75]
    >>> cumulative_ratios(0.6, 3, "linear")
    [0.2, 0.4, 0.6]
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps}")
    out = []
    for k in range(1, steps + 1):
        r = ratio * k / steps if schedule == "linear" else 1.0 - (1.0 - ratio) ** (k / steps)
        out.append(round(r, 12))
    out[-1] = ratio
    return out


def prune_iterative(
    model: ir.Model,
    ratio: float,
    criterion: str = "l2",
    *,
    steps: int,
    schedule: str = "geometric",
    finetune_epochs: int = 0,
    finetune: Mapping[str, Any] | None = None,
    data: Any = None,
    ratio_for: Sequence[tuple[str, float]] = (),
    ignore: Sequence[str] = (),
    attention: str = "heads",
    allow_approximate: bool = False,
    seed: int = 0,
    **prune_kw: Any,
):
    """Prune ``model`` to ``ratio`` in ``steps`` rounds (see the module doc); returns a
    `spa_nm.api.PruneResult` whose report sums the rounds and lists them under ``"steps"``.

    ``prune_kw`` are further `spa_nm.api.prune` keywords (``global_ranking``, ``round_to``, …).
    """
    from spa_nm import api
    from spa_nm.importance import DATA_DRIVEN
    from spa_nm.metrics import count
    from spa_nm.plan import group_key

    ratios = cumulative_ratios(ratio, steps, schedule)
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ConfigError(f"finetune epochs must be a non-negative integer, got {finetune_epochs}")
    ft_data = getattr(data, "data", data)  # a GradientOptions carries its data
    if finetune_epochs and ft_data is None:
        raise ConfigError("fine-tuning between pruning steps needs data (--data)")
    if finetune and not finetune_epochs:
        raise ConfigError("fine-tuning options given without fine-tuning epochs")
    if prune_kw.get("groups") is not None and steps > 1:
        raise ConfigError("group ids change between rounds: restrict groups with one step only")
    for pat, r in ratio_for:
        if not (isinstance(r, int | float) and 0 <= r < 1) or math.isnan(r):
            raise ConfigError(f"ratio for {pat!r} must be in [0, 1), got {r}")
    dg0 = api.analyze(model, ignore, attention=attention, allow_approximate=allow_approximate)
    sizes = {group_key(g): g.size for g in dg0.groups}
    prunable0 = sum(g.size for g in dg0.prunable_groups)
    before = count(dg0.view.model)
    current, res, rounds = model, None, []
    removed, pruned_keys = 0, set()
    t0 = time.perf_counter()
    for k, r_k in enumerate(ratios, 1):
        overrides = tuple(
            (pat, cumulative_ratios(r, steps, schedule)[k - 1] if r else 0.0)
            for pat, r in ratio_for
        )
        res = api.prune(
            current, r_k, criterion, ratio_for=overrides, sizes=sizes,
            data=data if criterion in DATA_DRIVEN else None, ignore=ignore,
            attention=attention, allow_approximate=allow_approximate, seed=seed + k - 1,
            **prune_kw,
        )  # fmt: skip
        removed += res.report["channels_removed"]
        pruned_keys |= {group_key(res.graph.groups[gid]) for gid in res.plan.removed}
        entry = {
            "step": k,
            "ratio": r_k,
            "channels_removed": res.report["channels_removed"],
            "params_after": res.report["params_after"],
            "macs_after": res.report["macs_after"],
            "notes": res.report["notes"],
        }
        if criterion in res.report:
            entry[criterion] = res.report[criterion]
        current = res.model
        if finetune_epochs:
            from spa_nm.train.finetune import finetune as _finetune

            kw = {"seed": seed + k - 1, **dict(finetune or {})}
            current, ft = _finetune(current, ft_data, method="dense", epochs=finetune_epochs, **kw)
            entry["finetune"] = {"epochs": ft["epochs"], "steps": ft["steps"], "val": ft["val"]}
        rounds.append(entry)
    after = count(current)
    report = dict(res.report)
    report.update(
        {
            "params_before": before["params"],
            "params_after": after["params"],
            "macs_before": before["macs"],
            "macs_after": after["macs"],
            "groups_total": len(dg0.groups),
            "groups_prunable": len(dg0.prunable_groups),
            "groups_pruned": len(pruned_keys),
            "channels_removed": removed,
            "channel_ratio": round(removed / prunable0, 6) if prunable0 else 0.0,
            "schedule": schedule,
            "steps": rounds,
            "notes": [n for e in rounds for n in e["notes"]],
            "seconds": round(time.perf_counter() - t0, 4),
        }
    )
    report.pop(criterion, None)
    res.model = current
    res.report = report
    return res
