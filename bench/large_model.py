"""Large models: prune a generated multi-GB external-data model and record peak memory.

    python bench/large_model.py [--gb 2.5] [--out bench/results]

Builds an MLP whose weights (float32, seeded) are streamed straight into ``big.onnx.data``, so
the generator itself stays small; then runs ``spa-nm prune big.onnx -o out/big.onnx --ratio 0.5``
in a subprocess and records its wall time and peak resident memory (ru_maxrss of the child),
and checks the output with the ONNX checker (path-based, as the model is over 2 GB) and on
onnxruntime against the zero-group oracle's shape (same output names and shapes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, gb: float) -> Path:
    """An MLP d -> h -> h -> d -> 10 with about ``gb`` GB of float32 weights."""
    # weights ~ 2*d*h + h*h floats; with h = 2d: 4d^2 + 4d^2 = 8 d^2 floats = 32 d^2 bytes
    d = int((gb * 2**30 / 32) ** 0.5) // 64 * 64
    h = 2 * d
    shapes = {"w1": (h, d), "w2": (h, h), "w3": (d, h), "w4": (10, d)}
    data = folder / "big.onnx.data"
    rng = np.random.default_rng(0)
    inits, offset = [], 0
    with open(data, "wb") as f:
        for name, shape in shapes.items():
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            for rows in np.array_split(np.arange(shape[0]), max(1, shape[0] // 1024)):
                chunk = (rng.standard_normal((rows.size, shape[1]), dtype=np.float32) / np.sqrt(shape[1])).astype(np.float32)
                f.write(chunk.tobytes())
            length = int(np.prod(shape)) * 4
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
            offset += length
            inits.append(t)
    nodes = [
        helper.make_node("Gemm", ["input", "w1"], ["a"], transB=1),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Gemm", ["ra", "w2"], ["b"], transB=1),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Gemm", ["rb", "w3"], ["c"], transB=1),
        helper.make_node("Relu", ["c"], ["rc"]),
        helper.make_node("Gemm", ["rc", "w4"], ["output"], transB=1),
    ]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, d])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = folder / "big.onnx"
    onnx.save(m, path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("SPA_NM_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        src = build(tmp, args.gb)
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in tmp.iterdir())
        out = tmp / "out" / "big.onnx"
        t = time.perf_counter()
        p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "prune", str(src), "-o", str(out), "--ratio", "0.5",
                            "--report", str(tmp / "report.json")], capture_output=True, text=True)  # fmt: skip
        secs = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if p.returncode:
            print(p.stdout, p.stderr)
            return 1
        rep = json.loads((tmp / "report.json").read_text())["models"][0]
        out_size = sum(f.stat().st_size for f in out.parent.iterdir())
        onnx.checker.check_model(str(out), full_check=True)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal([1, sess.get_inputs()[0].shape[1]]).astype(np.float32)
        y = sess.run(None, {"input": x})[0]
        assert y.shape == (1, 10)
        del sess
    row = {
        "model_gb": round(size / 2**30, 2),
        "output_gb": round(out_size / 2**30, 2),
        "generate_s": round(gen_s, 1),
        "prune_cli_s": round(secs, 1),
        "peak_rss_gb": round(peak / 2**30, 2),
        "peak_over_model": round(peak / size, 2),
        "params": f"{rep['params_before']:,} -> {rep['params_after']:,}",
    }
    info = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.platform()}, {os.cpu_count()} cores"
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Large external-data model", "",
        f"Date and machine: {info}. A generated MLP with float32 weights in an external data file, "
        "pruned by the CLI at ratio 0.5 in a subprocess; peak memory is the child's ru_maxrss. The "
        "output is written back with external data, passes the path-based full ONNX checker and runs "
        "on onnxruntime.", "",
        "| " + " | ".join(row) + " |", "|" + "---|" * len(row), "| " + " | ".join(str(v) for v in row.values()) + " |",
    ]  # fmt: skip
    (args.out / "large_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
