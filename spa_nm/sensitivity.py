"""Pruning sensitivity: prune one channel group alone at each ratio, compare with the original.

For every prunable group (``per="group"``), or every layer whose output channels form a group
(``per="layer"``: a Conv/Gemm/MatMul producer; layers coupled by a residual share their group,
so they share its numbers and say so), and every ratio R: `spa_nm.api.prune` with
``groups=(id,)`` removes ⌊R·|G|⌋ channels of that group only (``round_to`` 1 by default, so
small ratios remove something), then the original and the pruned model run on the same inputs
(random, or a .npz) on onnxruntime with graph optimizations off. Recorded per run: the largest
and the mean absolute output difference over all outputs; for a classifier-like first output
([N, C], C > 1) the top-1 agreement; with labels, the pruned accuracy and its drop.

Writes ``sensitivity.json`` and, when matplotlib is installed (the ``plot`` extra),
``sensitivity.png``; both atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import ConfigError, InputError
from spa_nm.runtime import np_dtype, random_input

__all__ = [
    "DEFAULT_RATIOS",
    "PER",
    "format_table",
    "load_eval_data",
    "sensitivity",
    "write_outputs",
]

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7)
PER = ("group", "layer")


def _session(model: ir.Model):
    from spa_nm.io import to_proto_with_data
    from spa_nm.runtime import _ort

    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(
        to_proto_with_data(model).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def load_eval_data(
    path: str | os.PathLike, input_names: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (by input name, or ``x_val`` / ``x`` / ``x_train`` for a one-input model) and the
    optional ``labels`` (or ``y_val`` / ``y`` / ``y_train`` beside the matching x)."""
    from spa_nm.io import read_npz

    p = Path(path)
    arrays = read_npz(p)
    labels = arrays.get("labels")
    if all(n in arrays for n in input_names):
        inputs = {n: arrays[n] for n in input_names}
    elif len(input_names) == 1 and (
        key := next((k for k in ("x_val", "x", "x_train") if k in arrays), None)
    ):
        inputs = {input_names[0]: arrays[key]}
        if labels is None:
            labels = arrays.get("y" + key[1:])
    else:
        raise InputError(
            f"{p}: no arrays for the model inputs {input_names} (keys: {sorted(arrays)})"
        )
    n = {len(a) for a in inputs.values()}
    if len(n) != 1 or 0 in n:
        raise InputError(f"{p}: input arrays are empty or differ in length")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.size != n.pop():
            raise InputError(
                f"{p}: {labels.size} labels for {len(next(iter(inputs.values())))} samples"
            )
    return inputs, labels


def _batches(sess, data, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Feeds of ``samples`` inputs in the model's batch size (random when ``data`` is None)."""
    inputs = sess.get_inputs()
    lead = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    static = isinstance(lead, int) and lead > 0
    b = lead if static else min(samples, 32)
    out = []
    if data is not None:
        n = min(len(next(iter(data.values()))), samples)
        if n < b:
            raise InputError(f"{n} samples, the model takes batches of {b}")
        for s in range(0, n - b + 1 if static else n, b):
            out.append(
                {
                    i.name: np.asarray(data[i.name][s : s + b]).astype(np_dtype(i.type))
                    for i in inputs
                }
            )
        return out
    rng = np.random.default_rng(seed)
    for _ in range(max(1, -(-samples // b))):
        out.append({i.name: random_input(rng, i, b, 32) for i in inputs})
    return out


def _outputs(sess, batches) -> list[np.ndarray]:
    runs = [sess.run(None, f) for f in batches]
    return [
        np.concatenate([r[k] for r in runs]) if runs[0][k].ndim else runs[0][k]
        for k in range(len(runs[0]))
    ]


def _compare(ref: list[np.ndarray], got: list[np.ndarray], labels) -> dict[str, Any]:
    diffs = [
        np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(-1)
        for a, b in zip(ref, got, strict=True)
    ]
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    out: dict[str, Any] = {
        "max_abs_error": float(d.max(initial=0.0)),
        "mean_abs_error": float(d.mean()) if d.size else 0.0,
    }
    a, b = ref[0], got[0]
    if a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating):
        out["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
        if labels is not None:
            n = min(len(labels), len(a))
            acc0 = float(np.mean(a[:n].argmax(1) == labels[:n]))
            out["accuracy"] = float(np.mean(b[:n].argmax(1) == labels[:n]))
            out["accuracy_drop"] = acc0 - out["accuracy"]
    return out


def _layers(dg, group) -> list[str]:
    """Producer layers of a group: nodes that own a WEIGHT_OUT slice of it."""
    from spa_nm.facts import Blocked, Role
    from spa_nm.graph import node_label

    ids = {id(p) for p in group.params if p.role == Role.WEIGHT_OUT}
    out = []
    for i, f in dg.facts.items():
        if not isinstance(f, Blocked) and any(id(p) in ids for p in f.params):
            out.append(node_label(dg.view.nodes[i], i))
    return out


def sensitivity(
    model: ir.Model,
    ratios: tuple[float, ...] | list[float] = DEFAULT_RATIOS,
    criterion: str = "l2",
    *,
    per: str = "group",
    data: str | os.PathLike | None = None,
    samples: int = 32,
    round_to: int = 1,
    seed: int = 0,
    hessian: str | None = None,
    calibration: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Prune each group alone at each ratio and measure the output error (module docstring)."""
    from spa_nm import api

    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise ConfigError(f"ratios must be in (0, 1), got {ratios}")
    if per not in PER:
        raise ConfigError(f"per must be one of {', '.join(PER)}, got {per!r}")
    if int(samples) < 1:
        raise ConfigError(f"samples must be positive, got {samples}")
    dg = api.analyze(model)
    sess = _session(model)
    names = [i.name for i in sess.get_inputs()]
    arrays, labels = load_eval_data(data, names) if data is not None else (None, None)
    batches = _batches(sess, arrays, int(samples), seed)
    ref = _outputs(sess, batches)
    n_eval = sum(len(next(iter(f.values()))) if f else 0 for f in batches)
    result: dict[str, Any] = {
        "criterion": criterion, "ratios": ratios, "per": per, "round_to": int(round_to),
        "inputs": "data" if data is not None else "random", "samples": n_eval, "entries": [],
    }  # fmt: skip
    if labels is not None and ref and ref[0].ndim == 2:
        n = min(len(labels), len(ref[0]))
        result["accuracy"] = float(np.mean(ref[0][:n].argmax(1) == labels[:n]))
    for g in dg.prunable_groups:
        runs = []
        for r in ratios:
            res = api.prune(model, r, criterion, groups=(g.id,), round_to=round_to, seed=seed,
                            hessian=hessian, calibration=calibration)  # fmt: skip
            rep = res.report
            entry = {"ratio": r, "channels_removed": rep["channels_removed"],
                     "params_after": rep["params_after"], "macs_after": rep["macs_after"]}  # fmt: skip
            if rep["channels_removed"]:
                entry.update(_compare(ref, _outputs(_session(res.model), batches), labels))
            else:  # nothing removed at this ratio: the model is the original
                entry.update(_compare(ref, ref, labels))
            runs.append(entry)
        layers = _layers(dg, g)
        base = {"group": g.id, "size": g.size, "layers": layers, "results": runs}
        if per == "group":
            result["entries"].append(base)
        else:
            for name in layers:
                shared = [x for x in layers if x != name]
                result["entries"].append({"layer": name, **base, "shared_with": shared})
    return result


def format_table(result: dict[str, Any]) -> str:
    """One row per group (or layer): mean |output error| at each ratio."""
    key = "accuracy_drop" if "accuracy" in result else "mean_abs_error"
    label = "accuracy drop" if key == "accuracy_drop" else "mean |error|"
    head = ["layer" if result["per"] == "layer" else "group", "size"] + [
        f"R={r:g}" for r in result["ratios"]
    ]
    rows = [head]
    for e in result["entries"]:
        name = (
            e["layer"] if result["per"] == "layer" else f"#{e['group']} {(e['layers'] or ['?'])[0]}"
        )
        rows.append([name[:48], str(e["size"])] + [f"{x[key]:.3g}" for x in e["results"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"{label} per ratio ({result['criterion']}, {result['inputs']} inputs, {result['samples']} samples)"
    ]
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """``sensitivity.json`` and (with matplotlib) ``sensitivity.png`` in ``out_dir``."""
    from spa_nm.report import write_json

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the output folder ({e.strerror})") from e
    written = [out / "sensitivity.json"]
    write_json(result, written[0])
    png = _plot(result, out / "sensitivity.png")
    if png is not None:
        written.append(png)
    return written


def _plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'spa_nm[plot]'): wrote JSON only")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in result["entries"]:
        name = (
            e["layer"] if result["per"] == "layer" else f"#{e['group']} {(e['layers'] or ['?'])[0]}"
        )
        ys = [max(x["mean_abs_error"], 1e-12) for x in e["results"]]
        ax.plot(result["ratios"], ys, marker="o", label=name[-40:])
    ax.set_yscale("log")
    ax.set_xlabel("ratio of the group's channels removed")
    ax.set_ylabel("mean |output error| vs original")
    ax.set_title(f"pruning sensitivity ({result['criterion']}, one group at a time)")
    if len(result["entries"]) <= 16:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".spa_nm-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path
