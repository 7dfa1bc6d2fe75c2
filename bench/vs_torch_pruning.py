"""Side by side: spa_nm on the exported ONNX vs Torch-Pruning on the PyTorch model.

    pip install torch-pruning transformers   # bench environment only, never a dependency
    python bench/vs_torch_pruning.py [--ratio 0.5] [--iters 100]

Same architectures, same ratio (fraction of channels removed per group; uniform, then global),
same criterion (group L2 magnitude). Measured: prune seconds, peak Python memory (tracemalloc),
parameters and MACs after/before (each tool's own model, counted by spa_nm on the ONNX file so
both use one counter), and onnxruntime CPU latency of the original and of both results,
interleaved (1 thread, batch 1, medians). A tool that crashes, or returns a model that no longer
runs or that it did not shrink, is reported as such.

Results: ``bench/results/vs_torch_pruning.{md,json}`` with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

warnings.filterwarnings("ignore")


def transformer_cases():
    """Small configs with random weights: built locally, nothing downloaded."""
    import torch
    import transformers as tf

    def gpt2():
        cfg = tf.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=64, vocab_size=256)
        m = tf.GPT2Model(cfg).eval()
        return m, (torch.randint(0, 256, (1, 32)),), "input_ids"

    def bert():
        cfg = tf.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=256, max_position_embeddings=64)
        m = tf.BertModel(cfg, add_pooling_layer=False).eval()
        return m, (torch.randint(0, 256, (1, 32)),), "input_ids"

    def vit():
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_labels=10)
        m = tf.ViTForImageClassification(cfg).eval()
        return m, (torch.randn(1, 3, 32, 32),), "pixel_values"

    def swin():
        cfg = tf.SwinConfig(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=10)
        m = tf.SwinForImageClassification(cfg).eval()
        return m, (torch.randn(1, 3, 32, 32),), "pixel_values"

    return {"gpt2-tiny": gpt2, "bert-tiny": bert, "vit-tiny": vit, "swin-tiny": swin}


def wrap(model):
    """A module returning one tensor (HF models return dataclasses)."""
    import torch.nn as nn

    class W(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    return W(model).eval()


def export(model, args, path: Path) -> Path:
    import torch

    torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["output"])
    return path


def run_ours(src: Path, dst: Path, ratio: float, global_ranking: bool) -> dict:
    import spa_nm

    model = spa_nm.load(src)
    tracemalloc.start()
    t = time.perf_counter()
    # round_to=1: Torch-Pruning's default (no rounding), so both tools remove the same counts
    res = spa_nm.prune(model, ratio, "l2", global_ranking=global_ranking, round_to=1)
    secs = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    spa_nm.save(res.model, dst)
    return {"seconds": secs, "peak_mb": peak / 2**20, "path": dst, "note": f"{res.report['groups_pruned']}/{res.report['groups_total']} groups pruned"}


def run_tp(net, args, dst: Path, ratio: float, global_ranking: bool, ignored) -> dict:
    import torch_pruning as tp

    imp = tp.importance.GroupMagnitudeImportance(p=2)
    tracemalloc.start()
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(net, args, importance=imp, pruning_ratio=ratio, global_pruning=global_ranking, ignored_layers=ignored)
    pruner.step()
    secs = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    export(net, args, dst)
    return {"seconds": secs, "peak_mb": peak / 2**20, "path": dst, "note": ""}


def counts(path: Path) -> tuple[int, int]:
    import spa_nm
    from spa_nm.metrics import count

    c = count(spa_nm.api._prepared(spa_nm.load(path)))
    return c["params"], c["macs"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    import copy

    import torch
    import torch_pruning as tp

    from models import get_model
    from spa_nm.runtime import bench, open_session

    conv_names = ["resnet_basic", "resnet_bottleneck", "resnext", "mobilenet_v2", "mobilenet_v3", "shufflenet_v2",
                  "densenet", "vgg_bn", "squeezenet", "unet"]  # fmt: skip
    cases = {}
    for n in conv_names:
        spec = get_model(n)
        cases[n] = (lambda spec=spec: (spec.builder(), tuple(torch.from_numpy(a) for a in spec.example_inputs()), "input"))
    cases.update(transformer_cases())
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, make in cases.items():
            for glob in (False, True):
                torch.manual_seed(0)
                net, inputs, _ = make()
                net = wrap(net) if name in transformer_cases() else net
                src = export(net, inputs, tmp / f"{name}.onnx")
                p0, m0 = counts(src)
                row = {"model": name, "ranking": "global" if glob else "uniform", "params": p0, "macs": m0}
                for tool in ("spa_nm", "torch-pruning"):
                    dst = tmp / f"{name}_{tool}_{int(glob)}.onnx"
                    try:
                        if tool == "spa_nm":
                            r = run_ours(src, dst, args.ratio, glob)
                        else:
                            tnet = copy.deepcopy(net)
                            last = [m for m in tnet.modules() if isinstance(m, torch.nn.Linear)][-1:]
                            r = run_tp(tnet, inputs, dst, args.ratio, glob, last)
                        pa, ma = counts(dst)
                        open_session(dst, "cpu")  # the result must still run
                        row[tool] = {"seconds": round(r["seconds"], 3), "peak_mb": round(r["peak_mb"], 1),
                                     "params_ratio": round(pa / p0, 3), "macs_ratio": round(ma / m0, 3) if m0 else None,
                                     "path": str(dst), "note": r["note"] or ("did not shrink the model" if pa >= p0 else "")}  # fmt: skip
                    except Exception as e:  # a crash is a result
                        row[tool] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
                        traceback.print_exc(limit=1)
                paths = [src] + [Path(row[t]["path"]) for t in ("spa_nm", "torch-pruning") if "path" in row[t]]
                lat = bench(paths, "cpu", 1, 1, 10, args.iters)
                row["latency_ms"] = round(lat[0].median_ms, 4)
                k = 1
                for t in ("spa_nm", "torch-pruning"):
                    if "path" in row[t]:
                        row[t]["latency_ms"] = round(lat[k].median_ms, 4)
                        del row[t]["path"]
                        k += 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    info = {"date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}", "platform": platform.platform(),
            "torch_pruning": tp.__version__, "torch": torch.__version__, "ratio": args.ratio}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_torch_pruning.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# spa_nm vs Torch-Pruning {info['torch_pruning']} at ratio {args.ratio} (group L2)",
        "",
        f"Machine: {info['platform']}, 2 cores; torch {info['torch']}. Date: {info['date']}. Latency: onnxruntime CPU, "
        f"1 thread, batch 1, original and both results interleaved, median of {args.iters} runs. Params and MACs of "
        "both results are counted by the same counter on the exported ONNX files. Both tools run "
        "without channel rounding (spa_nm --round-to 1, Torch-Pruning's default); spa_nm's own "
        "default of 8 avoids the global-ranking slow-downs seen below (see README).",
        "",
        "| model | ranking | tool | prune s | peak MB | params after/before | MACs after/before | latency ms (original → pruned) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for t in ("spa_nm", "torch-pruning"):
            x = r[t]
            if "error" in x:
                lines.append(f"| {r['model']} | {r['ranking']} | {t} | – | – | – | – | – | **crashed**: {x['error']} |")
            else:
                lines.append(f"| {r['model']} | {r['ranking']} | {t} | {x['seconds']} | {x['peak_mb']} | {x['params_ratio']} | "
                             f"{x['macs_ratio']} | {r['latency_ms']} → {x['latency_ms']} | {x['note']} |")  # fmt: skip
    (args.out / "vs_torch_pruning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
