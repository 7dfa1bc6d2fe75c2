"""Fine-tune an ONNX model in torch, with or without an N:M schedule, and write it back.

    model, report = finetune(model, "train.npz", method="mdgf-exp", pattern="1:8", epochs=10)

The model runs in torch through `spa_nm.train.to_torch` (an interpreter of the ONNX graph whose
parameters are the float initializers); the schedule of `spa_nm.train.sparse` replaces each
sparsified weight W by its W̃ in the forward pass (METHODS.md §2.2–§2.5); `write_back` puts the
trained values into a copy of the same graph with the hard target N:M masks applied exactly
(§2.4 Export), and every sparsified weight is re-checked with `spa_nm.nm.check_nm`.

Loss: cross-entropy of the first output against ``labels`` when the data has labels; otherwise
distillation, the mean squared error to the *input* model's outputs (computed once with
onnxruntime), and the report says which. Validation accuracy (or, without labels, the MSE to
the input model and the top-1 agreement with it) is measured with onnxruntime on the
written-back model, before and after, on a separate validation set or a seeded split.

``oneshot`` needs no torch: it is `spa_nm.sparsify` plus the validation. ``dense`` trains without
masks (e.g. after structured pruning).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa_nm.errors import ConfigError, InputError, SpaNmError
from spa_nm.nm import NMSpec, check_nm
from spa_nm.train.data import Dataset, load_arrays, make_dataset, model_inputs, split
from spa_nm.train.sparse import (
    DEFAULT_GEOMETRIC_K,
    METHODS,
    SRSTE_LAMBDA,
    NMSparsifier,
    find_targets,
)

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "evaluate", "finetune"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
_EVAL_BATCH = 256


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConfigError(
            "torch is not installed: finetune needs it (pip install 'spa_nm[train]')"
        ) from e
    return torch


def _as_dataset(model: ir.Model, data: Any, part: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Mapping):
        return make_dataset(model, dict(data), "<data>", part)
    return make_dataset(model, load_arrays(data), str(data), part)


def _validate(
    method: str,
    optimizer: str,
    lr_schedule: str,
    epochs,
    steps,
    lr,
    batch_size,
    weight_decay,
    val_fraction,
) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown lr schedule {lr_schedule!r}: choose from {', '.join(LR_SCHEDULES)}"
        )
    if epochs is not None and steps is not None:
        raise ConfigError("give epochs or steps, not both")
    for what, v in (("epochs", epochs), ("steps", steps), ("batch size", batch_size)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"{what} must be a positive integer, got {v}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"learning rate must be positive, got {lr}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {val_fraction}")


def finetune(
    model: ir.Model,
    data: str | os.PathLike | Mapping[str, np.ndarray] | Dataset,
    *,
    method: str = "sr-ste",
    pattern: str | NMSpec = "2:4",
    epochs: int | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    lr_schedule: str = "cosine",
    seed: int = 0,
    val: str | os.PathLike | Mapping[str, np.ndarray] | Dataset | None = None,
    val_fraction: float = 0.2,
    ignore: tuple[str, ...] = (),
    lambda_w: float = SRSTE_LAMBDA,
    beta: float | None = None,
    k: int = DEFAULT_GEOMETRIC_K,
    dense_frac: float | None = None,
    final_frac: float | None = None,
    source: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ir.Model, dict[str, Any]]:
    """Fine-tune ``model`` on ``data`` with ``method`` and return (new model, report).

    Args:
        model: the ONNX model (never modified).
        data: an .npz path or arrays by graph-input name plus optional ``labels``
            (see `spa_nm.train.data`).
        method: one of `spa_nm.train.sparse.METHODS`.
        pattern: target N:M (ignored by ``dense``).
        epochs, steps: the budget, one of them (default: one epoch).
        lr, batch_size, optimizer, weight_decay, momentum, lr_schedule: the optimiser
            (``momentum`` for SGD; ``cosine`` anneals to 0 over the run).
        seed: seeds torch, the data order and the validation split.
        val: a separate validation set; default a stratified ``val_fraction`` split of ``data``.
        ignore: node names or wildcards left dense (as in `spa_nm.sparsify`).
        lambda_w, beta, k, dense_frac, final_frac: schedule options, see `NMSparsifier`.
        source: how errors name the model (its file); default the graph's name.
        on_epoch: called after every epoch with its history entry (``epoch``, ``epochs``,
            ``step``, ``loss``, ``sad``, and with labels ``train_accuracy`` and
            ``val_accuracy``: torch, hard target masks applied); a progress bar hooks here.

    Raises:
        ConfigError: bad option, or torch missing. InputError: data that does not fit the model.
    """
    t0 = time.perf_counter()
    _validate(
        method, optimizer, lr_schedule, epochs, steps, lr, batch_size, weight_decay, val_fraction
    )
    spec = pattern if isinstance(pattern, NMSpec) else NMSpec.parse(pattern)
    if method != "oneshot":
        _torch()  # fail before any work
    train = _as_dataset(model, data, "train")
    if val is None:
        train, valid = split(train, val_fraction, seed)
        val_source = f"{val_fraction:g} of the training data (seeded{', stratified by label' if train.labels is not None else ''})"
    else:
        valid = _as_dataset(model, val, "val")
        val_source = valid.source
    if (train.labels is None) != (valid.labels is None):
        raise InputError(
            f"{valid.source}: the training and validation data must both have labels or both not"
        )
    labelled = train.labels is not None
    n_classes = _check_labels(model, train, valid)

    with tempfile.TemporaryDirectory(prefix="spa_nm-finetune-") as tmp:
        src_path = _save_tmp(model, Path(tmp) / "input.onnx")
        before = evaluate(src_path, valid, teacher_path=None if labelled else src_path)
        teacher = None if labelled else _predict(src_path, train)

        report: dict[str, Any] = {
            "method": method,
            "pattern": None if method == "dense" else str(spec),
            "loss": "cross-entropy on the first output"
            if labelled
            else "distillation: MSE to the input model's outputs (no labels)",
            "train_samples": len(train),
            "val_samples": len(valid),
            "val_source": val_source,
            "seed": seed,
        }
        if method == "oneshot":
            from spa_nm.nm import sparsify

            new, rep = sparsify(model, spec, ignore=tuple(ignore))
            targets = {e["weight"]: e["axis"] for e in rep["layers_sparsified"]}
            report.update({"epochs": 0, "steps": 0, "schedule": {"method": "oneshot", "pattern": str(spec)},
                           "layers_sparsified": rep["layers_sparsified"], "layers_skipped": rep["layers_skipped"],
                           "history": [], "sad": [], "sad_total": 0})  # fmt: skip
        else:
            new, targets, train_rep = _train(
                model, train, teacher, spec, method, n_classes,
                epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
                weight_decay=weight_decay, momentum=momentum, lr_schedule=lr_schedule, seed=seed,
                ignore=ignore, lambda_w=lambda_w, beta=beta, k=k, dense_frac=dense_frac, final_frac=final_frac,
                source=source or model.graph.name or "<model>", valid=valid, on_epoch=on_epoch,
            )  # fmt: skip
            report.update(train_rep)
        report["sparsity"] = _check_exported(new, targets, spec)
        out_path = _save_tmp(new, Path(tmp) / "output.onnx")
        after = evaluate(out_path, valid, teacher_path=None if labelled else src_path)
    report["val"] = {"before": before, "after": after}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return new, report


def _torch_accuracy(mod, sp, valid: Dataset, batch_size: int, fixed_batch: bool) -> float:
    """Validation accuracy of the module as it would be exported: the hard target masks
    replace the schedule's transforms for the pass (METHODS.md §2.6: the authors' code
    validated with the soft mask; we do not)."""
    torch = _torch()
    saved = dict(mod.weight_transforms)
    masks = {k: torch.from_numpy(np.asarray(m)) for k, m in (sp.final_masks() or {}).items()}
    mod.weight_transforms.clear()
    for name, m in masks.items():
        mod.weight_transforms[name] = lambda w, m=m: w * m.to(w.dtype)
    was_training = mod.training
    mod.eval()
    correct = seen = 0
    try:
        with torch.no_grad():
            n = len(valid)
            for s in range(0, n, batch_size):
                idx = slice(s, s + batch_size)
                feeds = {k: torch.from_numpy(v[idx]) for k, v in valid.inputs.items()}
                m = len(next(iter(feeds.values())))
                if fixed_batch and m < batch_size:  # pad a static batch, count the real rows
                    feeds = {k: torch.cat([v, v[-1:].expand(batch_size - m, *v.shape[1:])]) for k, v in feeds.items()}
                logits = mod(**feeds)[0][:m]
                correct += int((logits.argmax(1).numpy() == valid.labels[idx]).sum())
                seen += m
    finally:
        mod.weight_transforms.clear()
        mod.weight_transforms.update(saved)
        mod.train(was_training)
    return correct / max(seen, 1)


def _check_labels(model: ir.Model, train: Dataset, valid: Dataset) -> int | None:
    """Number of classes of the first output; labels must index it."""
    if train.labels is None:
        return None
    out = model.graph.outputs[0]
    shape = out.shape
    if shape is not None and len(shape) != 2:
        raise InputError(
            f"{train.source}: labels need a [batch, classes] first output; output {out.name!r} has rank {len(shape)}"
        )
    c = shape[1] if shape is not None and isinstance(shape[1], int) else None
    for ds in (train, valid):
        if c is not None and ds.labels.max() >= c:
            raise InputError(
                f"{ds.source}: label {int(ds.labels.max())} is out of range for {c} classes (output {out.name!r})"
            )
    return c


def _save_tmp(model: ir.Model, path: Path) -> Path:
    from spa_nm import io

    io.save(model, path, verify=False)  # a scratch file, about to be run anyway
    return path


def _eval_batch(sess: Any) -> int:
    """Samples per onnxruntime run: the static batch dim when the model has one."""
    static = {
        i.shape[0]
        for i in sess.sess.get_inputs()
        if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0
    }
    return static.pop() if len(static) == 1 else _EVAL_BATCH


def _predict(path: Path, ds: Dataset) -> list[np.ndarray]:
    """Every output of the model at ``path`` on every sample of ``ds`` (onnxruntime, CPU)."""
    from spa_nm import runtime

    sess = runtime.open_session(path, "cpu")
    b = _eval_batch(sess)
    n = len(ds)
    chunks: list[list[np.ndarray]] = []
    for s in range(0, n, b):
        feeds = {k: v[s : s + b] for k, v in ds.inputs.items()}
        m = len(next(iter(feeds.values())))
        if m < b and b != _EVAL_BATCH:  # a static batch: pad the last chunk, drop the padding
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], b - m, 0)]) for k, v in feeds.items()}
        chunks.append([o[:m] for o in sess.run(feeds)])
    return [np.concatenate(c) for c in zip(*chunks, strict=True)]


def evaluate(
    path: str | os.PathLike, ds: Dataset, teacher_path: str | os.PathLike | None = None
) -> dict[str, float]:
    """Validation metrics of the ONNX model at ``path``, by onnxruntime: accuracy and
    cross-entropy against ``ds.labels``; without labels, the MSE to the outputs of the model at
    ``teacher_path`` (and the top-1 agreement with it when the first output is [batch, classes])."""
    outs = _predict(Path(path), ds)
    if ds.labels is not None:
        logits = outs[0].astype(np.float64)
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return {"accuracy": float(np.mean(logits.argmax(1) == ds.labels)),
                "loss": float(-np.mean(logp[np.arange(len(ds.labels)), ds.labels]))}  # fmt: skip
    if teacher_path is None:
        return {}
    ref = _predict(Path(teacher_path), ds)
    mse = float(
        np.mean(
            [
                np.mean((a.astype(np.float64) - b) ** 2)
                for a, b in zip(outs, ref, strict=True)
                if np.issubdtype(b.dtype, np.floating)
            ]
        )
    )
    res = {"mse_to_input_model": mse}
    if outs[0].ndim == 2 and outs[0].shape[1] > 1:
        res["top1_agreement"] = float(np.mean(outs[0].argmax(1) == ref[0].argmax(1)))
    return res


def _train(model, train: Dataset, teacher, spec, method, n_classes, *, epochs, steps, lr, batch_size, optimizer,
           weight_decay, momentum, lr_schedule, seed, ignore, lambda_w, beta, k, dense_frac, final_frac, source,
           valid=None, on_epoch=None):  # fmt: skip
    torch = _torch()
    from spa_nm.train import to_torch, write_back

    n = len(train)
    static = {d[0] for _, d, _ in model_inputs(model) if d and d[0] is not None}
    if static and batch_size not in static:
        b0 = min(static)
        raise ConfigError(
            f"{source}: the model's batch dimension is fixed at {b0}: use batch size {b0}, or export the model with a dynamic batch"
        )
    drop_last = bool(static) and n >= batch_size  # a fixed batch cannot take a short last batch
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    total = steps if steps is not None else (epochs or 1) * per_epoch
    targets, done, skipped = (
        ({}, [], []) if method == "dense" else find_targets(model, spec, tuple(ignore))
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mod = to_torch(model)
    params = mod.onnx_parameters()
    sp = NMSparsifier(params, targets, method, spec, total, lambda_w=lambda_w, beta=beta, k=k,
                      dense_frac=dense_frac, final_frac=final_frac)  # fmt: skip
    mod.weight_transforms.update(sp.transforms())
    trainable = [p for p in params.values() if p.requires_grad and p.dtype.is_floating_point]
    if not trainable:
        raise SpaNmError("the model has no floating-point initializers to train")
    if optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        (lambda j: 0.5 * (1 + math.cos(math.pi * j / total)))
        if lr_schedule == "cosine"
        else (lambda j: 1.0),
    )
    inputs = {k_: torch.from_numpy(v) for k_, v in train.inputs.items()}
    labels = None if train.labels is None else torch.from_numpy(train.labels)
    targets_t = (
        None if teacher is None else [torch.from_numpy(np.ascontiguousarray(t)) for t in teacher]
    )
    history: list[dict[str, Any]] = []
    step = epoch = 0
    mod.train()  # Dropout active, BatchNormalization statistics updated (as torch fine-tuning does)
    while step < total:
        order = torch.from_numpy(rng.permutation(n))
        loss_sum = correct = seen = 0
        sad0 = len(sp.sad)
        for s in range(0, n, batch_size):
            if step >= total:
                break
            idx = order[s : s + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            try:
                outs = mod(**{name: v[idx] for name, v in inputs.items()})
            except RuntimeError as e:  # the interpreter names the node
                raise SpaNmError(
                    f"{source}: the torch forward pass failed: {str(e).splitlines()[0][:300]}"
                ) from e
            if labels is not None:
                logits = outs[0].float()
                if logits.ndim != 2 or logits.shape[1] <= int(labels.max()):
                    raise InputError(
                        f"{train.source}: labels go up to {int(labels.max())}, the first output has shape {list(logits.shape)}"
                    )
                loss = torch.nn.functional.cross_entropy(logits, labels[idx])
                correct += int((logits.argmax(1) == labels[idx]).sum())
            else:
                terms = [
                    torch.nn.functional.mse_loss(o.float(), t[idx].float())
                    for o, t in zip(outs, targets_t, strict=True)
                    if t.dtype.is_floating_point
                ]
                loss = torch.stack(terms).mean()
            if not torch.isfinite(loss):
                raise SpaNmError(
                    f"training diverged at step {step} (loss {loss.item()}); lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sp.after_step()
            step += 1
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        epoch += 1
        entry = {
            "epoch": epoch,
            "step": step,
            "loss": round(loss_sum / max(seen, 1), 6),
            "sad": int(sum(sp.sad[sad0:])),
        }
        if labels is not None:
            entry["train_accuracy"] = round(correct / max(seen, 1), 6)
            if valid is not None and valid.labels is not None:
                entry["val_accuracy"] = round(_torch_accuracy(mod, sp, valid, batch_size, drop_last), 6)
        history.append(entry)
        if on_epoch is not None:
            on_epoch({**entry, "epochs": math.ceil(total / max(per_epoch, 1))})
        log.info("epoch %d (step %d/%d): loss %.4f", epoch, step, total, entry["loss"])
    mod.eval()
    masks = sp.final_masks() or None
    new = write_back(model, mod, masks=masks)
    rep = {
        "epochs": epoch,
        "steps": step,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "schedule": sp.describe(),
        "layers_sparsified": done,
        "layers_skipped": skipped,
        "history": history,
        "sad": list(sp.sad),
        "sad_total": int(sum(sp.sad)),
    }
    return new, targets, rep


def _check_exported(model: ir.Model, targets: dict[str, int], spec: NMSpec) -> float:
    """Every sparsified weight of the exported model satisfies N:M (§2.4 Export); returns the
    sparsity over those weights."""
    zeros = total = 0
    for name, axis in targets.items():
        w = model.graph.initializers[name].const_value.numpy()
        if not check_nm(w, axis, spec):
            raise SpaNmError(
                f"internal error: exported weight {name!r} is not {spec} along axis {axis}"
            )
        zeros += w.size - int(np.count_nonzero(w))
        total += w.size
    return round(zeros / total, 4) if total else 0.0
