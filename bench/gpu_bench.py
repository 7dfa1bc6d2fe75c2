"""GPU benchmark: dense vs structurally pruned, and dense vs 2:4-masked, on CUDA / TensorRT.

    python bench/gpu_bench.py [--ratios 0.25 0.5 0.7] [--batch 8] [--iters 200] [--out bench/results]

Needs onnxruntime-gpu (``pip install 'spa_nm[gpu]'``) and an NVIDIA GPU. Every number is tagged
with the execution provider read back from the session (onnxruntime-gpu lists CUDA even where it
cannot run and then falls back to the CPU silently). Without a usable GPU provider it says so
and exits 0 without writing results.

Structured pruning: each zoo model and a ResNet-50-size graph at several ratios, CUDA and
(where installed) TensorRT. N:M: the same graphs with every Conv/Gemm/MatMul weight zeroed 2:4
along its reduction axis (magnitude), TensorRT with ``trt_sparsity_enable`` on, against dense;
CUDA has no 2:4 kernels, so it is measured only as the control.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpu_providers() -> list[str]:
    """Providers that really run a model here (a probe session per provider)."""
    import onnxruntime as ort

    from spa_nm.runtime import open_session

    avail = ort.get_available_providers()
    probe = ROOT / "models" / "onnx" / "mlp.onnx"
    ok = []
    for name, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if ep not in avail:
            continue
        try:
            if open_session(probe, name).provider == name:
                ok.append(name)
        except Exception as e:  # listed but unusable (no GPU, missing libraries)
            print(f"{name}: listed by onnxruntime but does not run: {str(e).splitlines()[0][:200]}")
    return ok


def mask_2_4(src: Path, dst: Path) -> None:
    """Zero the 2 smallest |w| of every 4 consecutive weights along each layer's reduction axis."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    reduction = {}
    for n in m.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            reduction[n.input[1]] = 1
        elif n.op_type == "Gemm":
            tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
            reduction[n.input[1]] = 1 if tb else 0
        elif n.op_type == "MatMul":
            reduction[n.input[1]] = 0
    for i, t in enumerate(m.graph.initializer):
        if t.name not in reduction:
            continue
        w = numpy_helper.to_array(t)
        ax = reduction[t.name]
        if w.ndim < 2 or w.shape[ax] % 4:
            continue
        v = np.moveaxis(w, ax, -1)
        shp = v.shape
        blocks = v.reshape(-1, 4)
        keep = np.argsort(-np.abs(blocks), axis=1, kind="stable")[:, :2]
        mask = np.zeros_like(blocks, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        out = np.moveaxis((blocks * mask).reshape(shp), -1, ax)
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(out.astype(w.dtype), t.name))
    onnx.save(m, str(dst))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.7])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install 'spa_nm[gpu]'. No GPU benchmark run.")
        return 0
    providers = gpu_providers()
    if not providers:
        print(f"No usable GPU execution provider (onnxruntime {ort.__version__}, available: "
              f"{', '.join(ort.get_available_providers())}). No GPU benchmark run.")  # fmt: skip
        return 0

    import spa_nm
    from models import list_models
    from models.export import export_onnx
    from spa_nm.runtime import bench

    from prune_zoo import resnet50_like  # noqa: E402  (sibling script)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {n: export_onnx(n, tmp / f"{n}.onnx", "legacy", external_data=False) for n in list_models()}
        sources["resnet50-size"] = resnet50_like(tmp / "resnet50.onnx")
        for name, src in sources.items():
            variants = {"dense": src}
            model = spa_nm.load(src)
            for r in args.ratios:
                dst = tmp / f"{name}_p{int(r * 100)}.onnx"
                spa_nm.save(spa_nm.prune(model, r).model, dst)
                variants[f"pruned {r}"] = dst
            sparse = tmp / f"{name}_2of4.onnx"
            mask_2_4(src, sparse)
            variants["2:4 masked"] = sparse
            for prov in providers:
                opts = {"tensorrt": {"trt_sparsity_enable": True}} if prov == "tensorrt" else None
                try:
                    res = bench(list(variants.values()), prov, args.batch, None, 20, args.iters, opts)
                except Exception as e:
                    print(f"{name} on {prov}: {str(e).splitlines()[0][:200]}")
                    continue
                dense_ms = res[0].median_ms
                for (label, _), r in zip(variants.items(), res, strict=True):
                    rows.append({"model": name, "variant": label, "asked": prov, "ran_on": r.provider,
                                 "median_ms": round(r.median_ms, 4), "p90_ms": round(r.p90_ms, 4),
                                 "speedup_vs_dense": round(dense_ms / r.median_ms, 3)})  # fmt: skip
                    print(rows[-1], flush=True)
    import subprocess

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    info = {"date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}", "gpu": gpu,
            "onnxruntime": ort.__version__, "platform": platform.platform(), "batch": args.batch}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = [f"# GPU benchmark ({info['gpu']}, onnxruntime {info['onnxruntime']}, batch {args.batch}, {info['date']})", "",
             "| model | variant | asked | ran on | median ms | p90 ms | speed-up vs dense |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['model']} | {r['variant']} | {r['asked']} | {r['ran_on']} | {r['median_ms']} | {r['p90_ms']} | {r['speedup_vs_dense']}× |" for r in rows]
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
