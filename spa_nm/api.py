"""The pipeline: load → graph → groups → importance → plan → surgery. The only module that
knows every stage."""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm import io
from spa_nm.errors import ConfigError
from spa_nm.graph import ATTENTION_MODES, DependencyGraph
from spa_nm.graph import analyze as _analyze
from spa_nm.metrics import count
from spa_nm.passes import (
    fold_shape_arithmetic,
    inline_constant_ifs,
    remove_dead_nodes,
    split_shared_fills,
    unmerge_transposes,
)
from spa_nm.plan import DEFAULT_ROUND_TO, PruneConfig, PrunePlan, make_plan
from spa_nm.surgery import apply_plan, check_model
from spa_nm.symbolic import has_symbolic_dims, has_unknown_shapes, refine_symbolic_shapes

__all__ = ["PruneResult", "analyze", "copy_model", "inspect", "load", "prune", "save", "sparsify"]


@dataclass
class PruneResult:
    model: ir.Model
    report: dict[str, Any]
    plan: PrunePlan | None = None
    graph: DependencyGraph | None = field(default=None, repr=False)
    # the model the plan was made on (after pre-passes, before surgery); shares tensors
    source: ir.Model | None = field(default=None, repr=False)

    def __iter__(self):  # allows ``model, report = spa_nm.prune(...)``
        return iter((self.model, self.report))


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model (external data included) and infer its shapes."""
    return io.load(path)


def save(
    model: ir.Model, path: str | os.PathLike, *, inputs=(), external_data: bool | None = None, verify: bool = True
) -> None:
    """Save atomically; refuses to overwrite any of ``inputs`` (or their weights). Weights go to
    ``<path>.data`` when ``external_data`` is True or (default) when the model had external data
    or is > 2 GB. With ``verify`` and onnxruntime installed, a written file onnxruntime refuses
    (and the input among ``inputs`` does not) is a SurgeryError and is not left behind."""
    io.save(model, path, inputs=inputs, external_data=external_data, verify=verify)


def analyze(
    model: ir.Model, ignore=(), *, attention: str = "heads", allow_approximate: bool = False
) -> DependencyGraph:
    """The dependency graph of channel axes, with ``.groups`` and ``.blocked``.

    Like `prune`, it works on a copy whose static shape arithmetic is folded to constants, so
    it reports what `prune` will see; ``graph.view.model`` is that copy. ``attention`` and
    ``allow_approximate`` are `prune`'s.
    """
    _check_attention(attention)
    return _prepared_graph(model, ignore=ignore, attention=attention, allow_approximate=allow_approximate)[1]


# block reasons that come from shapes inference left unknown (a symbolic dim it could not
# carry, an op it does not know): worth a second, symbolic shape inference
_SHAPE_REASONS = ("unknown", "no static size", "computed at run time", "partly broadcasts", "does not match")


def _prepared_graph(model: ir.Model, **kw) -> tuple[ir.Model, DependencyGraph]:
    """The prepared copy and its dependency graph. Where channels block for want of shapes
    and the graph has symbolic dims or shapeless values, once more with onnxruntime's symbolic
    shape inference (`spa_nm.symbolic`; seconds on a large CNN with symbolic image sizes, so
    only when it can free something)."""
    work = _prepared(model)
    dg = _analyze(work, **kw)
    wants = any(
        any(r in b.reason for r in _SHAPE_REASONS) for g in dg.groups for b in g.blocked
    ) or has_unknown_shapes(work)
    if wants and (has_symbolic_dims(work) or has_unknown_shapes(work)):
        sym = _prepared(model, symbolic=True)
        sdg = _analyze(sym, **kw)
        if _prunable_params(sdg) >= _prunable_params(dg):
            return sym, sdg
    return work, dg


def _prunable_params(dg: DependencyGraph) -> int:
    return sum(len(g.params) for g in dg.groups if g.prunable)


def _check_attention(attention: str) -> None:
    if attention not in ATTENTION_MODES:
        raise ConfigError(
            f"attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}"
        )


def _prepared(model: ir.Model, symbolic: bool = False) -> ir.Model:
    """A copy with static shape arithmetic folded (exact), repeated while shape inference,
    seeing the folded constants, makes more of it static (a few rounds). ``symbolic``: first
    name the dims ONNX leaves unknown and fill in shapes of ops it cannot infer."""
    work = copy_model(model)
    for _ in range(2 if symbolic else 0):  # what it names, ONNX inference carries on (and back)
        if not refine_symbolic_shapes(work):
            break
        io.infer_shapes(work)
    split_shared_fills(work)  # one zero state per stacked-RNN layer, not one for all
    for _ in range(4):
        # unmerge: a batched transpose written through a merged [B*H] axis (dynamo exporter)
        if not fold_shape_arithmetic(work) + unmerge_transposes(work) + inline_constant_ifs(work):
            break
        io.infer_shapes(work)
        if symbolic:
            refine_symbolic_shapes(work)
    return work


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy (nodes, values, attributes) that shares the immutable tensors."""
    return model.clone()


def prune(
    model: ir.Model,
    ratio: float,
    criterion: str = "l2",
    *,
    global_ranking: bool = False,
    round_to: int = DEFAULT_ROUND_TO,
    ignore: tuple[str, ...] | list[str] = (),
    aggregation: str = "sum",
    seed: int = 0,
    check: bool = True,
    groups: tuple[int, ...] | list[int] | None = None,
    hessian: Any = None,
    calibration: str | os.PathLike | None = None,
    attention: str = "heads",
    allow_approximate: bool = False,
    ratio_for: Sequence[tuple[str, float]] = (),
    data: Any = None,
    steps: int = 1,
    schedule: str = "geometric",
    finetune_epochs: int = 0,
    finetune: Mapping[str, Any] | None = None,
    sizes: Mapping[tuple[str, ...], int] | None = None,
) -> PruneResult:
    """Remove a fraction ``ratio`` of the channels of every prunable group.

    ``attention``: ``"heads"`` removes whole attention heads (with their Q/K/V rows and output
    projection columns), ``"head_dim"`` the same within-head indices of every head.
    ``allow_approximate`` also prunes groups whose removal is not exact (the residual stream
    through LayerNorm/RMSNorm: the statistics change); the report lists them under
    ``"approximate"`` with the output error measured on random inputs.

    ``groups`` restricts pruning to those group ids (see `analyze`). ``hessian`` (a proxy
    name, or a whole `spa_nm.obspa.ObspaOptions`) and ``calibration`` (a .npz) configure
    ``criterion="obspa"``.

    ``ratio_for``: (node-name glob, ratio) overrides; the last match wins, ``ignore`` beats
    them (`spa_nm.plan`). ``data``: a .npz path, arrays by input name (+ ``labels``) or a
    `spa_nm.datadriven.GradientOptions`, for ``taylor`` / ``hessian`` / ``snip`` (without it,
    random inputs labelled by the dense model) and for fine-tuning. ``steps`` > 1 prunes in K
    rounds on a ``schedule`` ("geometric" or "linear"), re-scoring each round, with
    ``finetune_epochs`` of dense fine-tuning on ``data`` after each round (``finetune``: more
    `spa_nm.train.finetune.finetune` keywords); see `spa_nm.iterative`. ``sizes``: original
    group sizes by `spa_nm.plan.group_key` (set by the iterative rounds).
    Returns a new model (the input is not modified) and the report of the contract.
    """
    if steps != 1 or finetune_epochs:
        from spa_nm.iterative import prune_iterative

        return prune_iterative(
            model, ratio, criterion, steps=steps, schedule=schedule,
            finetune_epochs=finetune_epochs, finetune=finetune, data=data, ratio_for=ratio_for,
            global_ranking=global_ranking, round_to=round_to, ignore=ignore,
            aggregation=aggregation, seed=seed, check=check, groups=groups, hessian=hessian,
            calibration=calibration, attention=attention, allow_approximate=allow_approximate,
        )  # fmt: skip
    gradient = _gradient_options(criterion, data, seed)
    obspa = None
    if criterion == "obspa":
        from spa_nm.obspa import ObspaOptions

        if isinstance(hessian, ObspaOptions):  # every option (damping, samples, ...)
            obspa = hessian
        else:
            obspa = ObspaOptions.make(hessian, calibration, seed=seed)
    elif hessian is not None or calibration is not None:
        raise ConfigError("hessian and calibration data apply to criterion 'obspa' only")
    cfg = PruneConfig(
        ratio, criterion, global_ranking, int(round_to), tuple(ignore), aggregation, seed,
        groups=None if groups is None else tuple(int(g) for g in groups), obspa=obspa,
        gradient=gradient, ratio_for=tuple((str(p), r) for p, r in ratio_for), sizes=sizes,
    )  # fmt: skip
    _check_attention(attention)
    t0 = time.perf_counter()
    work, dg = _prepared_graph(
        model, ignore=cfg.ignore, attention=attention, allow_approximate=allow_approximate
    )
    before = count(work)
    source = copy_model(work)
    plan = make_plan(dg, cfg)
    if not plan.removed:
        work = copy_model(model)  # nothing to remove: the input, unchanged
    apply_plan(dg, plan)
    if plan.removed:
        remove_dead_nodes(work)
    if check and plan.removed:
        check_model(work)
    after = count(work) if plan.removed else before
    seconds = time.perf_counter() - t0
    report = {
        "params_before": before["params"],
        "params_after": after["params"],
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "groups_total": len(dg.groups),
        "groups_prunable": len(dg.prunable_groups),
        "groups_pruned": len(plan.removed),
        "channels_removed": plan.n_removed,
        "blocked": _blocked_list(dg),
        "notes": plan.notes,
        "seconds": round(seconds, 4),
    }
    if plan.details:  # the criterion's own report (obspa: Hessian proxy, per-layer error)
        report[cfg.criterion] = plan.details
    if cfg.ratio_for:  # which groups each override reached (the last match wins)
        report["ratio_for"] = [
            {"pattern": pat, "ratio": r,
             "groups": [g.id for g in dg.prunable_groups if any(fnmatch.fnmatchcase(n, pat) for n in g.nodes)]}
            for pat, r in cfg.ratio_for
        ]  # fmt: skip
    approx = [g for g in dg.groups if g.id in plan.removed and g.approximate]
    if approx:
        report["approximate"] = {
            "groups": [
                {"group": g.id, "reasons": sorted({b.reason for b in g.approximate})}
                for g in approx
            ],
            "error": approximate_error(model, work, seed),
        }
    return PruneResult(work, report, plan, dg, source)


def _gradient_options(criterion: str, data: Any, seed: int) -> Any:
    """`GradientOptions` for a gradient criterion (None otherwise; no torch imported)."""
    from spa_nm.importance import DATA_DRIVEN

    if criterion not in DATA_DRIVEN:
        if data is not None:
            raise ConfigError(
                f"data applies to the criteria {', '.join(DATA_DRIVEN)} and to fine-tuning, "
                f"not to {criterion!r} alone"
            )
        return None
    from spa_nm.datadriven import GradientOptions

    if isinstance(data, GradientOptions):
        return data
    return GradientOptions(data=data, seed=seed)


def approximate_error(original: ir.Model, pruned: ir.Model, seed: int = 0) -> dict[str, Any]:
    """Max and mean |pruned - original| over every float output on random inputs (the
    `spa_nm.testing.random_feeds` of ``seed``), on onnxruntime with optimizations off."""
    try:
        from spa_nm.testing import random_feeds, run

        feeds = random_feeds(original, seed)
        ref, got = run(original, feeds), run(pruned, feeds)
    except ImportError:
        return {"measured": False, "note": "onnxruntime is not installed (the cpu extra)"}
    diffs = [
        np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)).reshape(-1)
        for r, g in zip(ref, got, strict=True)
        if np.asarray(r).dtype.kind == "f" and np.asarray(r).shape == np.asarray(g).shape
    ]
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    scale = max((float(np.max(np.abs(r))) for r in ref if np.asarray(r).dtype.kind == "f"), default=0.0)
    return {
        "measured": True,
        "max_abs": float(d.max()) if d.size else 0.0,
        "mean_abs": float(d.mean()) if d.size else 0.0,
        "max_abs_reference": scale,
        "inputs": f"random (spa_nm.testing.random_feeds), seed {seed}",
    }


def _blocked_list(dg: DependencyGraph) -> list[dict[str, str]]:
    """Every reason a channel group cannot be pruned (op-level and group-level), once each."""
    seen, out = set(), []
    for b in [*dg.blocked, *(b for g in dg.groups for b in g.blocked)]:
        key = (b.node, b.reason)
        if key not in seen:
            seen.add(key)
            out.append({"node": b.node, "op": b.op, "reason": b.reason})
    return out


def inspect(
    model: ir.Model, *, attention: str = "heads", allow_approximate: bool = False
) -> dict[str, Any]:
    """Groups, blocked ops with reasons, params and MACs per op type, and where the parameters
    are: ``params_prunable`` / ``prunable_fraction`` (parameters of initializers that lose
    entries when some prunable group is pruned) and ``held_back`` (the other parameters, by the
    reason their groups are blocked, largest first). ``attention`` and ``allow_approximate``
    are `prune`'s."""
    dg = analyze(model, attention=attention, allow_approximate=allow_approximate)
    c = count(dg.view.model, dg.view)
    prunable, held = _param_accounting(dg)
    total = sum(prunable.values()) + sum(n for by in held.values() for n in by.values())
    held_back = sorted(
        (
            {"reason": reason, "op": op, "params": sum(by.values()), "initializers": len(by)}
            for (op, reason), by in held.items()
        ),
        key=lambda h: -h["params"],
    )
    return {
        "params": c["params"],
        "macs": c["macs"],
        "by_op": c["by_op"],
        "groups": [g.describe() for g in dg.groups],
        "blocked": _blocked_list(dg),
        "prunable_groups": len(dg.prunable_groups),
        "params_prunable": sum(prunable.values()),
        "prunable_fraction": round(sum(prunable.values()) / total, 4) if total else 0.0,
        "held_back": held_back,
    }


def _counted(arr) -> bool:
    """Parameters as `metrics.count` counts them: floats and 8/16-bit quantized integers."""
    return arr is not None and (arr.dtype.kind == "f" or (arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2))


def _param_accounting(dg: DependencyGraph) -> tuple[dict[str, int], dict[tuple[str, str], dict[str, int]]]:
    """Sizes of the member initializers of prunable groups, and of every other initializer by
    (op, reason) of the first block of a group it belongs to (or of no group at all)."""
    view = dg.view
    size: dict[str, int] = {}
    for name in view.model.graph.initializers:
        arr = view.const(name)
        if _counted(arr):
            size[name] = int(arr.size)

    def initializers(name: str) -> list[str]:
        d = view.derived(name)  # a dequantized weight counts as its integer tensor and scales
        if d is None:
            return [name]
        return sorted({src for a in range(d.value.ndim) for src, _ in d.sources(a)})

    prunable: dict[str, int] = {}
    for g in dg.prunable_groups:
        for p in g.params:
            for name in initializers(p.name):
                if _counted(arr := view.const(name)):
                    prunable[name] = int(arr.size)
    held: dict[tuple[str, str], dict[str, int]] = {}
    reason_of: dict[str, tuple[str, str]] = {}
    for g in dg.groups:
        if g.prunable:
            continue
        why = (g.blocked[0].op, g.blocked[0].reason) if g.blocked else ("-", "too few channels or no producer weight")
        for p in g.params:
            for name in initializers(p.name):
                reason_of.setdefault(name, why)
    for name in set(size) | set(reason_of):
        if name in prunable:
            continue
        if not _counted(arr := view.const(name)):
            continue
        n = int(arr.size)
        key = reason_of.get(name, ("-", "read by no channel rule (shape constants, lookup tables, ...)"))
        held.setdefault(key, {})[name] = n
    return prunable, held


def sparsify(
    model: ir.Model,
    pattern,
    ignore: tuple[str, ...] | list[str] = (),
    *,
    method: str = "magnitude",
    data: Any = None,
    calibration_samples: int = 128,
    sequential: bool = False,
    seed: int = 0,
    calibration: Any = None,
) -> tuple[ir.Model, dict[str, Any]]:
    """N:M masks on every weight along its reduction axis (``pattern``: "2:4" or an NMSpec).

    ``method``: ``"magnitude"`` (default; no data), ``"wanda"`` or ``"sparsegpt"``
    (docs/nm_oneshot.md): calibrated on ``data`` (a .npz path or a mapping of arrays by graph
    input name) or, without it, on synthetic inputs from ``seed`` (the report's
    ``calibration.source`` says which), at most ``calibration_samples`` samples, every layer on
    the dense model's activations or, with ``sequential``, on its sparsified predecessors'.
    ``calibration``: a whole `spa_nm.oneshot.Calibration` instead of those keywords. Magnitude
    with ``data`` also reports each layer's ``reconstruction_error``.

    Returns a new model (the input is untouched) and the report.
    """
    from spa_nm.nm import NMSpec
    from spa_nm.nm import sparsify as _sparsify

    spec = pattern if isinstance(pattern, NMSpec) else NMSpec.parse(pattern)
    if calibration is None and (method != "magnitude" or data is not None):
        from spa_nm.oneshot import Calibration

        calibration = Calibration(data=data, samples=calibration_samples, seed=seed, sequential=sequential)
    model, report = _sparsify(model, spec, tuple(ignore), method=method, calibration=calibration)
    check_model(model, "sparsified model")
    return model, report
