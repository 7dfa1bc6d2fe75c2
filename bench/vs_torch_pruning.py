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
import signal
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

    def llama():  # RMSNorm, rotary, SwiGLU, grouped-query attention (eager: the legacy exporter
        # cannot convert SDPA with grouped K/V heads)
        cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
                             attn_implementation="eager")  # fmt: skip
        m = tf.LlamaForCausalLM(cfg).eval()
        return m, (torch.randint(0, 256, (1, 32)),), "input_ids"

    return {"gpt2-tiny": gpt2, "bert-tiny": bert, "vit-tiny": vit, "swin-tiny": swin, "llama-tiny": llama}


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


def run_ours(src: Path, dst: Path, ratio: float, global_ranking: bool, approximate: bool = False) -> dict:
    import spa_nm

    model = spa_nm.load(src)
    tracemalloc.start()
    t = time.perf_counter()
    # round_to=1: Torch-Pruning's default (no rounding), so both tools remove the same counts
    res = spa_nm.prune(model, ratio, "l2", global_ranking=global_ranking, round_to=1, allow_approximate=approximate)
    secs = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    spa_nm.save(res.model, dst)
    note = f"{res.report['groups_pruned']}/{res.report['groups_total']} groups pruned"
    heads = _heads(res)
    if heads:
        note += f"; attention heads {heads[0]} → {heads[1]}"
    if approximate and "approximate" in res.report:
        err = res.report["approximate"]["error"]
        note += f"; residual stream approximate: max abs error {err['max_abs']:.3g} (outputs up to {err['max_abs_reference']:.3g})"
    return {"seconds": secs, "peak_mb": peak / 2**20, "path": dst, "note": note}


def _heads(res) -> tuple[int, int] | None:
    """Total head count of the attention-score MatMuls ([B, H, T, T], two activations) before
    and after pruning, or None for a model without attention."""

    def after_softmax(v, depth=0):  # attention·V reads the probabilities
        p = v.producer()
        return p is not None and depth < 4 and (p.op_type == "Softmax" or (
            p.op_type in ("Where", "Cast", "Dropout", "Reshape") and any(after_softmax(i, depth + 1) for i in p.inputs if i is not None)))  # fmt: skip

    def count(model):
        n = 0
        for node in model.graph:
            shape = node.outputs[0].shape if node.outputs else None
            if (node.op_type == "MatMul" and all(v.const_value is None for v in node.inputs) and shape is not None
                    and len(shape) == 4 and shape[-1] == shape[-2] and not after_softmax(node.inputs[0])):  # fmt: skip
                n += int(shape[1])
        return n

    before, after = count(res.source), count(res.model)
    return (before, after) if before else None


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


def _timeout(signum, frame):
    raise TimeoutError("did not finish in the time limit (--tp-timeout)")


def counts(path: Path) -> tuple[int, int]:
    import spa_nm
    from spa_nm.metrics import count

    c = count(spa_nm.api._prepared(spa_nm.load(path)))
    return c["params"], c["macs"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--only", nargs="*", default=None, help="run these models; rows of the others are kept from the results file")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tp-timeout", type=int, default=300, help="seconds Torch-Pruning may take per model")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    if args.render:
        data = json.loads((args.out / "vs_torch_pruning.json").read_text())
        write_md(data["rows"], data["machine"], data["machine"].get("iters", args.iters), args.out)
        return 0
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
                tools = ("spa_nm", "spa_nm-approx", "torch-pruning") if name in transformer_cases() else ("spa_nm", "torch-pruning")
                for tool in tools:
                    dst = tmp / f"{name}_{tool}_{int(glob)}.onnx"
                    try:
                        if tool.startswith("spa_nm"):
                            r = run_ours(src, dst, args.ratio, glob, approximate=tool == "spa_nm-approx")
                        else:
                            tnet = copy.deepcopy(net)
                            last = [m for m in tnet.modules() if isinstance(m, torch.nn.Linear)][-1:]
                            signal.signal(signal.SIGALRM, _timeout)
                            signal.alarm(args.tp_timeout)  # a tool that does not return is a result too
                            try:
                                r = run_tp(tnet, inputs, dst, args.ratio, glob, last)
                            finally:
                                signal.alarm(0)
                        pa, ma = counts(dst)
                        open_session(dst, "cpu")  # the result must still run
                        row[tool] = {"seconds": round(r["seconds"], 3), "peak_mb": round(r["peak_mb"], 1),
                                     "params_ratio": round(pa / p0, 3), "macs_ratio": round(ma / m0, 3) if m0 else None,
                                     "path": str(dst), "note": r["note"] or ("did not shrink the model" if pa >= p0 else "")}  # fmt: skip
                    except Exception as e:  # a crash is a result
                        row[tool] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
                        traceback.print_exc(limit=1)
                paths = [src] + [Path(row[t]["path"]) for t in tools if "path" in row[t]]
                lat = bench(paths, "cpu", 1, 1, 10, args.iters)
                row["latency_ms"] = round(lat[0].median_ms, 4)
                k = 1
                for t in tools:
                    if "path" in row[t]:
                        row[t]["latency_ms"] = round(lat[k].median_ms, 4)
                        del row[t]["path"]
                        k += 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    info = {"date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}", "platform": platform.platform(),
            "torch_pruning": tp.__version__, "torch": torch.__version__, "ratio": args.ratio, "iters": args.iters}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    old = args.out / "vs_torch_pruning.json"
    if args.only and old.exists():  # keep the other models' rows (and say when they ran)
        prev = json.loads(old.read_text())
        ran = {r["model"] for r in rows}
        kept = [r for r in prev["rows"] if r["model"] not in ran]
        for r in kept:
            r.setdefault("date", prev["machine"]["date"])
        for r in rows:
            r["date"] = info["date"]
        order = list(dict.fromkeys([r["model"] for r in prev["rows"]] + [r["model"] for r in rows]))
        rows = sorted(kept + rows, key=lambda r: (order.index(r["model"]), r["ranking"] != "uniform"))
    (args.out / "vs_torch_pruning.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    write_md(rows, info, args.iters, args.out)
    return 0


def write_md(rows: list[dict], info: dict, iters: int, out: Path) -> None:
    """``vs_torch_pruning.md`` from the rows (``--render`` redoes it from the JSON)."""
    args = argparse.Namespace(ratio=info["ratio"], iters=iters)
    lines = [
        f"# spa_nm vs Torch-Pruning {info['torch_pruning']} at ratio {args.ratio} (group L2)",
        "",
        f"Machine: {info['platform']}, 2 cores; torch {info['torch']}. Date: {info['date']}. Latency: onnxruntime CPU, "
        f"1 thread, batch 1, original and both results interleaved, median of {args.iters} runs. Params and MACs of "
        "both results are counted by the same counter on the exported ONNX files. Both tools run "
        "without channel rounding (spa_nm --round-to 1, Torch-Pruning's default); spa_nm's own "
        "default of 8 avoids the global-ranking slow-downs seen below (see README). "
        "`spa_nm` prunes exactly (zero-group oracle); `spa_nm-approx` adds the residual stream "
        "through LayerNorm/RMSNorm (`--allow-approximate`, error measured on random inputs), as "
        "Torch-Pruning does. With `--only`, the other models' rows are kept from the previous run "
        "(each row's `date` in the JSON says when it ran).",
        "",
        "| model | ranking | tool | prune s | peak MB | params after/before | MACs after/before | latency ms (original → pruned) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for t in ("spa_nm", "spa_nm-approx", "torch-pruning"):
            if t not in r:
                continue
            x = r[t]
            if "error" in x:
                what = "did not finish" if x["error"].startswith("TimeoutError") else "crashed"
                lines.append(f"| {r['model']} | {r['ranking']} | {t} | – | – | – | – | – | **{what}**: {x['error']} |")
            else:
                lines.append(f"| {r['model']} | {r['ranking']} | {t} | {x['seconds']} | {x['peak_mb']} | {x['params_ratio']} | "
                             f"{x['macs_ratio']} | {r['latency_ms']} → {x['latency_ms']} | {x['note']} |")  # fmt: skip
    (out / "vs_torch_pruning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
