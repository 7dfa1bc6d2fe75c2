"""The three timing regimes of structured pruning and the scratch baselines (METHODS.md §1.8,
§4.1), each one call on an ONNX model, training through `spa_nm.train.finetune` (method
``dense``).

=========================  ====================================================================
regime                     what runs
=========================  ====================================================================
``prune-train``            (1) prune at initialisation (``snip``, ``l2``, ``random``; with
                           ``reinit`` the weights are re-drawn first), then train ``epochs``
``train-prune-finetune``   (2) [train ``train_epochs``] → prune (one-shot or ``steps`` rounds)
                           → fine-tune ``epochs``
``train-prune``            (3) [train ``train_epochs``] → prune (``obspa``; its baseline ``l2``),
                           no fine-tuning
``scratch-e``              Scratch-E: the pruned architecture, weights re-drawn, trained
                           ``epochs`` (as many as the dense model had)
``scratch-b``              Scratch-B: the same with the dense model's compute, epochs ×
                           MACs(dense) / MACs(pruned), rounded, capped at ``cap`` × epochs (§4.1:
                           the ImageNet code caps 90·ratio at 180, i.e. ``cap`` = 2)
=========================  ====================================================================

Every regime evaluates on one validation set (``val``, or a seeded stratified split of
``data`` made once, so all regimes of a run see the same samples) with onnxruntime, and returns
the new model and a report: the prune report, the training reports and ``val_accuracy``.

`reinitialize` re-draws every trainable initializer, seeded, with torch's defaults where they
are plain: weights (tensors with producer rows, ``weight_out`` in `spa_nm.facts.Role`)
Kaiming-uniform U(−1/√fan_in, 1/√fan_in) with fan_in = elements per output unit (torch's
``kaiming_uniform_(a=√5)`` for Conv, Linear; for ConvTranspose torch counts fan_in on its other
axis); biases, norm shifts and running means 0; norm scales and running variances 1. Roles come
from the op rules; the one piece of op knowledge here is which BatchNormalization input is the
running variance (input 4). Float tensors without a role are kept and listed in the report.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import ConfigError
from spa_nm.facts import Blocked, Role

__all__ = [
    "REGIMES",
    "evaluate_accuracy",
    "macs_per_sample",
    "reinitialize",
    "run_regime",
    "scratch_epochs",
]

REGIMES = ("prune-train", "train-prune-finetune", "train-prune", "scratch-e", "scratch-b")
_VARIANCE_INPUT = {"BatchNormalization": 4}  # the running variance resets to 1, not 0


def reinitialize(model: ir.Model, seed: int = 0) -> tuple[ir.Model, dict[str, Any]]:
    """A copy of ``model`` with every trainable initializer re-drawn (module doc), and a
    report: ``{"redrawn": {name: how}, "kept": [names without a known role]}``."""
    from spa_nm import api

    dg = api.analyze(model)
    roles: dict[str, dict[Role, int]] = {}
    for fa in dg.facts.values():
        if isinstance(fa, Blocked):
            continue
        for p in fa.params:
            roles.setdefault(p.name, {}).setdefault(p.role, p.axis)
    out = api.copy_model(model)
    rng = np.random.default_rng(seed)
    redrawn: dict[str, str] = {}
    kept: list[str] = []
    for name, value in out.graph.initializers.items():
        t = value.const_value
        if t is None or not t.dtype.is_floating_point():
            continue
        old = t.numpy()
        r = roles.get(name, {})
        if Role.WEIGHT_OUT in r and old.ndim >= 2:
            fan_in = old.size // max(old.shape[r[Role.WEIGHT_OUT]], 1)
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            new, how = rng.uniform(-bound, bound, old.shape), f"kaiming-uniform fan_in={fan_in}"
        elif Role.WEIGHT_IN in r and old.ndim == 2:
            fan_in = old.shape[r[Role.WEIGHT_IN]]
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            new, how = rng.uniform(-bound, bound, old.shape), f"kaiming-uniform fan_in={fan_in}"
        elif Role.NORM_SCALE in r:
            new, how = np.ones(old.shape), "ones"
        elif Role.NORM_STAT in r:
            var = any(_VARIANCE_INPUT.get(n.op_type) == i for n, i in value.uses())
            new, how = (np.ones(old.shape), "ones") if var else (np.zeros(old.shape), "zeros")
        elif Role.BIAS in r or Role.NORM_SHIFT in r:
            new, how = np.zeros(old.shape), "zeros"
        else:
            kept.append(name)
            continue
        value.const_value = ir.Tensor(np.asarray(new, dtype=old.dtype), name=name)
        redrawn[name] = how
    return out, {"seed": seed, "redrawn": redrawn, "kept": kept}


def scratch_epochs(epochs: int, macs_dense: int, macs_pruned: int, cap: float = 2.0) -> int:
    """Scratch-B's budget: ``epochs`` × MACs(dense) / MACs(pruned), rounded, at most ``cap`` ×
    ``epochs`` (METHODS.md §4.1).

    >>> scratch_epochs(10, 400, 100)
    20
    >>> scratch_epochs(10, 300, 200)
    15
    """
    most = math.floor(cap * epochs)
    if macs_pruned <= 0:
        return most
    return max(epochs, min(round(epochs * macs_dense / macs_pruned), most))


def macs_per_sample(model: ir.Model) -> int:
    """MACs of one sample: symbolic batch dims of the inputs set to 1, shapes re-inferred
    (`spa_nm.metrics.count` cannot count MACs through a symbolic batch)."""
    from spa_nm import api, io
    from spa_nm.metrics import count

    m = api.copy_model(model)
    changed = False
    for v in m.graph.inputs:
        if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int):
            v.shape = ir.Shape([1, *list(v.shape)[1:]])
            changed = True
    if changed:
        for node in m.graph:
            for out in node.outputs:
                if out not in m.graph.outputs:
                    out.shape = None
        io.infer_shapes(m)
    return int(count(m)["macs"])


def evaluate_accuracy(model: ir.Model, val) -> dict[str, float]:
    """Accuracy and cross-entropy of ``model`` on the labelled `Dataset` ``val``
    (onnxruntime, via `spa_nm.train.finetune.evaluate`)."""
    from spa_nm import io
    from spa_nm.train.finetune import evaluate

    with tempfile.TemporaryDirectory(prefix="spa_nm-regime-") as tmp:
        path = Path(tmp) / "model.onnx"
        io.save(model, path, verify=False)  # a scratch file, about to be run anyway
        return evaluate(path, val)


def _datasets(model: ir.Model, data, val, val_fraction: float, split_seed: int):
    """(train, val) `Dataset`s: ``val`` when given, else the data's own ``x_val``/``y_val``
    (METHODS.md §7 layout), else a seeded stratified split."""
    from spa_nm.train.data import Dataset, load_arrays, make_dataset, split

    def arrays_of(d):
        return dict(d) if isinstance(d, Mapping) else load_arrays(d)

    def source(d):
        return "<data>" if isinstance(d, Mapping) else str(d)

    if isinstance(data, Dataset):
        train, arrays = data, {}
    else:
        arrays = arrays_of(data)
        train = make_dataset(model, arrays, source(data), "train")
    if isinstance(val, Dataset):
        return train, val
    if val is not None:
        return train, make_dataset(model, arrays_of(val), source(val), "val")
    if "x_val" in arrays and "y_val" in arrays:
        return train, make_dataset(model, arrays, source(data), "val")
    return split(train, val_fraction, split_seed)


def run_regime(
    regime: str,
    model: ir.Model,
    data: Any,
    *,
    ratio: float,
    criterion: str,
    epochs: int = 0,
    train_epochs: int = 0,
    val: Any = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    reinit: bool = False,
    cap: float = 2.0,
    prune: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> tuple[ir.Model, dict[str, Any]]:
    """Run ``regime`` (module doc) on ``model`` and return (new model, report).

    ``data``: the training set (an .npz path, arrays or a `spa_nm.train.data.Dataset`, with
    labels); ``val``: a validation set (default: the .npz's ``x_val``/``y_val`` or a seeded
    split). ``prune``: more `spa_nm.api.prune` keywords (``steps``, ``global_ranking``,
    ``round_to``, ``hessian``, …); the gradient criteria read ``data``. ``train``: more
    `spa_nm.train.finetune.finetune` keywords (``lr``, ``batch_size``, …). ``seed`` seeds the
    training, the random criterion and the re-initialisation.
    """
    from spa_nm import api
    from spa_nm.importance import DATA_DRIVEN
    from spa_nm.metrics import count
    from spa_nm.train.finetune import finetune

    if regime not in REGIMES:
        raise ConfigError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    for what, v in (("epochs", epochs), ("train epochs", train_epochs)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"{what} must be a non-negative integer, got {v}")
    if regime == "train-prune" and epochs:
        raise ConfigError("regime train-prune does not fine-tune: give no epochs")
    if regime != "train-prune" and not epochs:
        raise ConfigError(f"regime {regime} trains: give epochs >= 1")
    if regime in ("prune-train", "scratch-e", "scratch-b") and train_epochs:
        raise ConfigError(f"regime {regime} starts untrained: train epochs do not apply")
    train_ds, val_ds = _datasets(model, data, val, val_fraction, split_seed)
    if train_ds.labels is None or val_ds.labels is None:
        raise ConfigError("the regimes measure accuracy: the data needs labels")
    tkw = {"seed": seed, **dict(train or {})}
    pkw = dict(prune or {})
    report: dict[str, Any] = {"regime": regime, "criterion": criterion, "ratio": ratio,
                              "seed": seed, "train_samples": len(train_ds), "val_samples": len(val_ds)}  # fmt: skip

    def fit(m: ir.Model, n: int) -> tuple[ir.Model, dict[str, Any]]:
        new, rep = finetune(m, train_ds, val=val_ds, method="dense", epochs=n, **tkw)
        return new, {k: rep[k] for k in ("epochs", "steps", "lr", "batch_size", "val", "seconds")}

    dense_macs = macs_per_sample(model)
    if regime == "prune-train" and reinit:
        model, rr = reinitialize(model, seed)
        report["reinit"] = {"seed": seed, "kept": rr["kept"]}
    if train_epochs:
        model, report["dense_training"] = fit(model, train_epochs)
    if regime != "prune-train":
        report["val_dense"] = evaluate_accuracy(model, val_ds)
    needs_data = criterion in DATA_DRIVEN or pkw.get("finetune_epochs")
    res = api.prune(
        model, ratio, criterion, seed=seed,
        data={**train_ds.inputs, "labels": train_ds.labels} if needs_data else None, **pkw,
    )  # fmt: skip
    report["prune"] = res.report
    pruned = res.model
    if regime in ("scratch-e", "scratch-b"):
        pruned, rr = reinitialize(pruned, seed)
        report["reinit"] = {"seed": seed, "kept": rr["kept"]}
    n = epochs
    pruned_macs = macs_per_sample(pruned)
    if regime == "scratch-b":
        n = scratch_epochs(epochs, dense_macs, pruned_macs, cap)
        report["scratch_b"] = {"dense_epochs": epochs, "epochs": n, "cap": cap,
                               "macs_dense": dense_macs, "macs_pruned": pruned_macs}  # fmt: skip
    report["val_pruned"] = evaluate_accuracy(pruned, val_ds)
    final = pruned
    if regime != "train-prune":
        final, report["training"] = fit(pruned, n)
    report["val_accuracy"] = evaluate_accuracy(final, val_ds)["accuracy"]
    report["params"] = count(final)["params"]
    report["macs_per_sample"] = pruned_macs
    report["macs_dense_per_sample"] = dense_macs
    return final, report
