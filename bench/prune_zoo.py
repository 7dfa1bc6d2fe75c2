"""Benchmark: prune every zoo model at ratio 0.5 and measure what it buys on onnxruntime CPU.

For each model (legacy exporter; dynamo too with --dynamo): prune seconds (median of 3), peak
Python memory during pruning (tracemalloc), params and MACs ratios, and ORT CPU latency before
and after (batch 1, one thread per session, the two models interleaved run by run, medians). A
ResNet-50-size graph (bottleneck 3-4-6-3, 224x224) checks the "prunes in under 1 s" goal.

    python bench/prune_zoo.py [--ratio 0.5] [--iters 200] [--dynamo] [--out bench/results]

Results go to ``bench/results/prune_zoo.{md,json}`` with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def resnet50_like(path: Path) -> Path:
    """A ResNet-50-size graph (25.5M params, 4.1 GMACs) exported with the legacy exporter."""
    import torch
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    layers, cin = [], 64
    for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = mid * 4
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000),
    ).eval()  # fmt: skip
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"])  # fmt: skip
    return path


def latency(paths: list[Path], iters: int, warmup: int = 10) -> list[tuple[float, float]]:
    """Median and p90 latency (ms) of each model, runs interleaved across models."""
    import onnxruntime as ort

    sessions, feeds = [], []
    for p in paths:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        sessions.append(s)
        rng = np.random.default_rng(0)
        feeds.append({i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                      for i in s.get_inputs()})  # fmt: skip
    times = [[] for _ in paths]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds, strict=True):
            s.run(None, f)
    for _ in range(iters):
        for k, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            t = time.perf_counter()
            s.run(None, f)
            times[k].append((time.perf_counter() - t) * 1e3)
    return [(statistics.median(t), float(np.percentile(t, 90))) for t in times]


def bench_one(name: str, src: Path, out_dir: Path, ratio: float, iters: int) -> dict:
    import spa_nm

    model = spa_nm.load(src)
    prunable = spa_nm.inspect(model)["prunable_fraction"]
    secs = []
    for _ in range(3):
        t = time.perf_counter()
        res = spa_nm.prune(model, ratio)
        secs.append(time.perf_counter() - t)
    tracemalloc.start()
    res = spa_nm.prune(model, ratio)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dst = out_dir / f"{src.stem}.pruned.onnx"
    spa_nm.save(res.model, dst)
    r = res.report
    (lat_a, p90_a), (lat_b, p90_b) = latency([src, dst], iters)
    macs_ratio = r["macs_before"] / max(r["macs_after"], 1)
    return {
        "model": name,
        "prunable": round(prunable, 4),
        "prune_s": round(statistics.median(secs), 4),
        "peak_mb": round(peak / 2**20, 1),
        "params_before": r["params_before"],
        "params_after": r["params_after"],
        "macs_before": r["macs_before"],
        "macs_after": r["macs_after"],
        "groups": f"{r['groups_pruned']}/{r['groups_total']}",
        "lat_before_ms": round(lat_a, 3),
        "lat_after_ms": round(lat_b, 3),
        "p90_before_ms": round(p90_a, 3),
        "p90_after_ms": round(p90_b, 3),
        "speedup": round(lat_a / lat_b, 3),
        "macs_ratio": round(macs_ratio, 3),
        "speedup_vs_macs": round((lat_a / lat_b) / macs_ratio, 3),
    }


def machine() -> dict:
    import onnxruntime

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--dynamo", action="store_true", help="also benchmark dynamo exports")
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    from models import list_models
    from models.export import export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exporters = ["legacy", "dynamo"] if args.dynamo else ["legacy"]
        for name in list_models():
            for exp in exporters:
                src = export_onnx(name, tmp / f"{name}_{exp}.onnx", exporter=exp)
                rows.append(bench_one(f"{name} ({exp})", src, tmp, args.ratio, args.iters))
                print(rows[-1], flush=True)
        if not args.skip_resnet50:
            src = resnet50_like(tmp / "resnet50_like.onnx")
            rows.append(
                bench_one("resnet50-size (legacy)", src, tmp, args.ratio, max(20, args.iters // 10))
            )
            print(rows[-1], flush=True)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_zoo.json").write_text(
        json.dumps({"machine": info, "ratio": args.ratio, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        f"# Prune benchmark: zoo at ratio {args.ratio}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}; Python {info['python']}, "
        f"onnxruntime {info['onnxruntime']}. Date: {info['date']}.",
        "Latency: ORT CPU, 1 thread, batch 1, before/after interleaved, median of "
        f"{args.iters} runs (ResNet-50-size: {max(20, args.iters // 10)}). Peak memory: tracemalloc during one prune.",
        "",
        "Reading it: the zoo models run in 0.01-0.4 ms, where onnxruntime's per-node overhead, not "
        "arithmetic, sets the time, so their speed-up stays well below the MACs ratio. The "
        "latency-follows-MACs goal (speed-up >= 0.8 x MACs ratio on dense convnets) is judged on the "
        "ResNet-50-size graph, whose convolutions dominate its run time; the prune-time goal "
        "(< 1 s for a ResNet-50-size graph) on the same row.",
        "",
        "| model | prunable params | prune s | peak MB | params before → after | MACs before → after | groups pruned/total | latency ms before → after | speed-up | MACs ratio | speed-up / MACs ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['prunable']:.0%} | {r['prune_s']} | {r['peak_mb']} | {r['params_before']:,} → {r['params_after']:,} | "
            f"{r['macs_before']:,} → {r['macs_after']:,} | {r['groups']} | {r['lat_before_ms']} → {r['lat_after_ms']} | "
            f"{r['speedup']}× | {r['macs_ratio']}× | {r['speedup_vs_macs']} |"
        )
    (args.out / "prune_zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
