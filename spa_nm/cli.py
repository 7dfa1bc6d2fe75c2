"""The ``spa-nm`` command line. Parses arguments, calls `spa_nm.api`, renders results.

Exit codes: 0 success; 1 a model failed during processing; 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from spa_nm.errors import InputError, SpaNmError

__all__ = ["main"]

log = logging.getLogger("spa_nm")

_EPILOG_MAIN = """examples:
  spa-nm inspect models/onnx/resnet_basic.onnx
  spa-nm prune models/onnx -o pruned --ratio 0.5 --report pruned/report.json
  spa-nm prune model.onnx -o model_pruned.onnx --ratio 0.3 --global --round-to 8
"""

_EPILOG_PRUNE = """examples:
  spa-nm prune model.onnx -o small.onnx --ratio 0.5
  spa-nm prune a.onnx b.onnx zoo/ -o out/ --ratio 0.3 --criterion l1 --report out/report.json
  spa-nm prune model.onnx -o small.onnx --ratio 0.5 --global --round-to 8 --ignore 'head*'
  spa-nm prune gpt2.onnx -o small.onnx --ratio 0.25 --allow-approximate   # + residual stream
"""


def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ratio must be a number in [0, 1), got {text!r}"
        ) from None
    if not 0 <= r < 1:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {text}")
    return r


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from spa_nm import __version__
    from spa_nm.importance import AGGREGATIONS, CRITERIA
    from spa_nm.plan import DEFAULT_ROUND_TO
    from spa_nm.runtime import PROVIDERS

    p = argparse.ArgumentParser(
        prog="spa-nm",
        description="Structurally prune any ONNX model: find coupled channels, remove them for real.",
        epilog=_EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"spa-nm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    pi = sub.add_parser(
        "inspect",
        parents=[common],
        help="show channel groups, blocked ops with reasons, params and MACs",
        epilog="examples:\n  spa-nm inspect model.onnx\n  spa-nm inspect model.onnx --json > groups.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pi.add_argument("model", help="an ONNX file")
    pi.add_argument("--json", action="store_true", help="print JSON instead of text")
    pi.add_argument(
        "--attention",
        choices=("heads", "head_dim"),
        default="heads",
        help="group attention by whole heads (default) or by head-dim indices",
    )
    pi.add_argument(
        "--allow-approximate",
        action="store_true",
        help="count groups whose removal is not exact (LayerNorm/RMSNorm residual streams) as prunable",
    )

    pp = sub.add_parser(
        "prune",
        parents=[common],
        help="remove channels from one or many models",
        epilog=_EPILOG_PRUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="ONNX files and/or folders (searched for *.onnx)"
    )
    pp.add_argument("-o", "--output", required=True, help="output file (one input file) or folder")
    pp.add_argument(
        "--ratio",
        type=_ratio,
        required=True,
        help="fraction of channels to remove per group, in [0, 1)",
    )
    pp.add_argument(
        "--criterion",
        choices=sorted(CRITERIA),
        default="l2",
        help="importance criterion (default: l2)",
    )
    pp.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default="sum",
        help="how member slices combine (default: sum)",
    )
    pp.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        help="rank normalized scores across all groups",
    )
    pp.add_argument(
        "--round-to",
        type=_positive,
        default=DEFAULT_ROUND_TO,
        metavar="K",
        help="keep surviving channel counts multiples of K; odd counts can run slower than "
        f"dense (default: {DEFAULT_ROUND_TO})",
    )
    pp.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="node names or wildcard patterns whose groups are kept",
    )
    pp.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default: 0)")
    pp.add_argument(
        "--attention",
        choices=("heads", "head_dim"),
        default="heads",
        help="attention: remove whole heads (default) or the same within-head indices of "
        "every head (head_dim)",
    )
    pp.add_argument(
        "--allow-approximate",
        action="store_true",
        help="also prune groups whose removal is not exact (a transformer's residual stream "
        "through LayerNorm/RMSNorm); the report marks them and measures the output error",
    )
    _add_obspa_args(pp)
    _add_schedule_args(pp)
    pp.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    pp.add_argument("--jobs", type=_positive, default=1, metavar="N", help="models pruned in parallel, each in its own process (default: 1)")
    pp.add_argument("--dry-run", action="store_true", help="show what would be pruned; write no model")

    _add_sensitivity_parser(sub, common)
    _add_regime_parser(sub, common)

    ps = sub.add_parser(
        "sparsify",
        parents=[common],
        help="N:M fine-grained sparsity on Conv/ConvTranspose/Gemm/MatMul weights",
        epilog="examples:\n  spa-nm sparsify model.onnx -o sparse.onnx --pattern 2:4\n"
        "  spa-nm sparsify pruned/ -o sparse/ --pattern 1:8 --ignore '*fc*' --report sparse/report.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ps.add_argument("inputs", nargs="+", metavar="INPUT", help="ONNX files and/or folders (searched for *.onnx)")
    ps.add_argument("-o", "--output", required=True, help="output file (one input file) or folder")
    ps.add_argument("--pattern", required=True, metavar="N:M", help="keep N of every M weights along the reduction axis, e.g. 2:4, 1:8")
    ps.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns to leave dense")
    ps.add_argument("--report", metavar="FILE.json", help="write a JSON report")

    _add_finetune_parser(sub, common)

    pv = sub.add_parser(
        "verify",
        parents=[common],
        help="compare a candidate model with the original on the same inputs",
        epilog="examples:\n  spa-nm verify model.onnx small.onnx\n  spa-nm verify model.onnx small.onnx --atol 1e-3 --data val.npz --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pv.add_argument("original")
    pv.add_argument("candidate")
    pv.add_argument("--atol", type=float, default=1e-4, help="largest allowed absolute difference (default: 1e-4)")
    pv.add_argument("--data", metavar="DATA.npz", help="inputs by name (or x_val of a training set); default: random")
    pv.add_argument("--provider", choices=PROVIDERS, default="cpu", help="execution provider (default: cpu)")
    pv.add_argument("--json", action="store_true", help="print JSON")

    pb = sub.add_parser(
        "bench",
        parents=[common],
        help="latency and throughput on onnxruntime, models interleaved",
        epilog="examples:\n  spa-nm bench model.onnx small.onnx\n  spa-nm bench small.onnx --provider cuda --batch 8 --iters 500 --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pb.add_argument("models", nargs="+", metavar="MODEL")
    pb.add_argument("--provider", choices=PROVIDERS, default="auto", help="execution provider (default: auto)")
    pb.add_argument("--batch", type=_positive, default=1, help="batch size for symbolic batch dims (default: 1)")
    pb.add_argument("--threads", type=_positive, default=None, help="intra-op threads (default: onnxruntime's)")
    pb.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default: 10)")
    pb.add_argument("--iters", type=_positive, default=100, help="timed runs per model (default: 100)")
    pb.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.ERROR
        if args.quiet
        else (logging.INFO if args.verbose or args.debug else logging.WARNING)
    )
    logging.basicConfig(level=level, format="spa-nm: %(levelname)s: %(message)s", stream=sys.stderr)
    _sigterm_as_interrupt()
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "prune":
            return _prune(args)
        if args.command == "sparsify":
            return _sparsify(args)
        if args.command == "sensitivity":
            return _sensitivity(args)
        if args.command == "regime":
            return _regime(args)
        if args.command == "finetune":
            return _finetune(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "bench":
            return _bench(args)
        parser.error(f"unknown command {args.command}")
    except SpaNmError as e:
        if args.debug:
            raise
        print(f"spa-nm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("spa-nm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed and finished outputs stay."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use)
        pass


# -- finetune -------------------------------------------------------------------------------

_EPILOG_FINETUNE = """examples:
  spa-nm finetune model.onnx --data train.npz -o sparse.onnx --method sr-ste --pattern 2:4 --epochs 10
  spa-nm finetune model.onnx --data train.npz --val val.npz -o sparse.onnx --method mdgf-exp --pattern 1:8 \\
      --steps 2000 --lr 1e-3 --report sparse.json
  spa-nm finetune pruned.onnx --data train.npz -o tuned.onnx --method dense --epochs 3 --optimizer sgd --lr 0.01

data: an .npz with one array per model input, named like it (samples on axis 0), plus 'labels'
(integer class ids: cross-entropy on the first output). Without 'labels' the model is distilled
to the input model's outputs (MSE). The layout x_train, y_train, x_val, y_val also works for a
one-input model. Validation accuracy is measured by onnxruntime on the written model, with the
hard N:M masks applied (METHODS.md section 2.4). Needs torch: pip install 'spa_nm[train]'.
"""


def _float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v != v or (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v >= hi):
            rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'})"
            raise argparse.ArgumentTypeError(f"expected a number in {rng}, got {text}")
        return v

    return parse


def _add_finetune_parser(sub, common) -> None:
    from spa_nm.train.sparse import DEFAULT_GEOMETRIC_K, METHODS, SRSTE_LAMBDA

    pf = sub.add_parser(
        "finetune",
        parents=[common],
        help="train in torch with an N:M schedule (SR-STE, MDGF, SDGF, ...) or dense, write the ONNX back",
        epilog=_EPILOG_FINETUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pf.add_argument("model", help="an ONNX file")
    pf.add_argument("--data", required=True, metavar="TRAIN.npz", help="training arrays (see below)")
    pf.add_argument("--val", metavar="VAL.npz", help="validation arrays (default: a seeded split of --data, see --val-fraction)")
    pf.add_argument("-o", "--output", required=True, help="output ONNX file")
    pf.add_argument("--method", "--schedule", dest="method", choices=METHODS, default="sr-ste", help="training method (default: sr-ste)")
    pf.add_argument("--pattern", default="2:4", metavar="N:M", help="target N:M pattern (default: 2:4; ignored by dense)")
    budget = pf.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive, help="passes over the training data (default: 1)")
    budget.add_argument("--steps", type=_positive, help="optimizer steps instead of epochs")
    pf.add_argument("--lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate (default: 0.001)")
    pf.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule (default: cosine)")
    pf.add_argument("--batch-size", "--batch", dest="batch_size", type=_positive, default=64, help="samples per step (default: 64)")
    pf.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer (default: adamw; sgd uses momentum 0.9)")
    pf.add_argument("--weight-decay", type=_float_arg(0), default=0.0, help="weight decay (default: 0)")
    pf.add_argument("--seed", type=int, default=0, help="seed of the initial order, split and torch (default: 0)")
    pf.add_argument("--threads", type=_positive, metavar="N", help="torch CPU threads (default: torch's; 1 is often fastest for small models)")
    pf.add_argument("--val-fraction", type=_float_arg(0, 1, lo_open=True), default=0.2, help="validation share when --val is not given (default: 0.2)")
    pf.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns to leave dense")
    pf.add_argument("--lambda-w", type=_float_arg(0), default=SRSTE_LAMBDA, help=f"SR-STE's lambda_W (default: {SRSTE_LAMBDA:g})")
    pf.add_argument("--beta", type=_float_arg(0, lo_open=True), help="MDGF decay rate (default: from the budget, D near 0 at 70%% of the steps)")
    pf.add_argument("--geometric-k", type=_positive, default=DEFAULT_GEOMETRIC_K, metavar="K", help=f"SDGF-Geometric's k, a power of two (default: {DEFAULT_GEOMETRIC_K})")
    pf.add_argument("--dense-frac", type=_float_arg(0, 1), help="share of dense steps first (default: 0.05 for mdgf/sdgf, else 0)")
    pf.add_argument("--final-frac", type=_float_arg(0, 1), help="share of binary target-mask steps last (default: 0.15 for mdgf/sdgf, else 0)")
    pf.add_argument("--report", metavar="FILE.json", help="write a JSON report")


class _EpochBar:
    """A progress bar over epochs with the loss and validation accuracy (a terminal only)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def update(self, entry: dict) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=entry["epochs"], desc=self.desc, unit="epoch", file=sys.stderr)
        post = {"loss": f"{entry['loss']:.4f}"}
        if "val_accuracy" in entry:
            post["val_acc"] = f"{entry['val_accuracy']:.4f}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finetune(args) -> int:
    from spa_nm import api, io
    from spa_nm.nm import NMSpec
    from spa_nm.report import write_json
    from spa_nm.train.finetune import finetune

    spec = NMSpec.parse(args.pattern)
    inputs = [args.model, args.data] + ([args.val] if args.val else [])
    for p in inputs:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    io.check_output_path(args.output, inputs)
    if args.report:
        io.check_output_path(args.report, [*inputs, args.output])
    model = api.load(args.model)
    if args.threads and args.method != "oneshot":
        from spa_nm.train.finetune import _torch

        _torch().set_num_threads(args.threads)
    t0 = time.perf_counter()
    bar = _EpochBar(args.model) if not args.quiet and sys.stderr.isatty() else None
    new, rep = finetune(
        model, args.data, val=args.val, method=args.method, pattern=spec, epochs=args.epochs,
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, seed=args.seed,
        val_fraction=args.val_fraction, ignore=tuple(args.ignore), lambda_w=args.lambda_w,
        beta=args.beta, k=args.geometric_k, dense_frac=args.dense_frac, final_frac=args.final_frac,
        source=args.model, on_epoch=bar.update if bar else None,
    )  # fmt: skip
    if bar:
        bar.close()
    io.save(new, args.output, inputs=inputs)
    rep = {"input": args.model, "output": args.output, "data": args.data, "status": "ok", **rep}
    if args.report:
        write_json(rep, args.report)
    if not args.quiet:
        what = "dense" if args.method == "dense" else f"{args.method} {spec}"
        layers = "" if args.method == "dense" else f", {len(rep['layers_sparsified'])} layers at {rep['sparsity']:.1%} sparsity ({len(rep['layers_skipped'])} skipped)"
        b, a = rep["val"]["before"], rep["val"]["after"]
        if "accuracy" in a:
            val = f"val accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}"
        else:
            val = f"val MSE to the input model {a.get('mse_to_input_model', float('nan')):.4g}"
        print(f"{args.model} -> {args.output}: {what}, {rep['epochs']} epochs ({rep['steps']} steps){layers}; "
              f"{val} (onnxruntime, {rep['val_samples']} samples); {time.perf_counter() - t0:.1f} s")  # fmt: skip
        fallback = {w: k for w, k in rep["schedule"].get("geometric_k", {}).items() if k < args.geometric_k}
        if fallback:  # METHODS.md §2.5: k'·M must divide the reduction size
            print(f"  geometric k fell back for {len(fallback)} weight(s): " + ", ".join(f"{w} k'={k}" for w, k in fallback.items()))
        if args.verbose:
            for sk in rep.get("layers_skipped", []):
                print(f"  skipped {sk['node']} ({sk['op']}): {sk['reason']}")
    return 0


# -- verify and bench -----------------------------------------------------------------------


def _verify(args) -> int:
    from spa_nm import runtime

    for p in (args.original, args.candidate):
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    rep = runtime.verify(args.original, args.candidate, atol=args.atol, data=args.data, provider=args.provider)
    if args.json:
        print(json.dumps(rep, indent=2))
    elif not args.quiet:
        for o in rep["outputs"]:
            top1 = f", top-1 agreement {o['top1_agreement']:.1%}" if "top1_agreement" in o else ""
            print(f"{o['name']}: max |diff| {o['max_abs_diff']:.3g}, mean {o['mean_abs_diff']:.3g}{top1}")
        print(f"{'OK' if rep['ok'] else 'FAIL'}: max |diff| {rep['max_abs_diff']:.3g} (atol {args.atol:g}) on {rep['provider']}")
    return 0 if rep["ok"] else 1


def _bench(args) -> int:
    from spa_nm import runtime

    for p in args.models:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    res = runtime.bench(args.models, args.provider, args.batch, args.threads, args.warmup, args.iters)
    if args.json:
        print(json.dumps([r.as_dict() for r in res], indent=2))
        return 0
    head = ("model", "provider", "batch", "median ms", "p90 ms", "samples/s", "session MB")
    rows = [head] + [
        (Path(r.path).name, r.provider, str(r.batch), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:.1f}", f"{r.session_mb:.1f}")
        for r in res
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    return 0


# -- inspect --------------------------------------------------------------------------------


def _inspect(args) -> int:
    from spa_nm import api
    from spa_nm.report import format_count

    model = api.load(args.model)
    info = api.inspect(model, attention=args.attention, allow_approximate=args.allow_approximate)
    info["model"] = args.model
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    prunable = [g for g in info["groups"] if g["prunable"]]
    print(f"{args.model}: {format_count(info['params'])} params, {format_count(info['macs'])} MACs")
    print(f"groups: {len(info['groups'])} ({len(prunable)} prunable)")
    total = info["params_prunable"] + sum(h["params"] for h in info["held_back"])
    print(
        f"params in prunable groups: {format_count(info['params_prunable'])} of "
        f"{format_count(total)} ({100 * info['prunable_fraction']:.1f}%)"
    )
    if info["held_back"]:
        print("held back (params, first reason of their groups):")
        for h in info["held_back"][:8]:
            print(f"  {format_count(h['params']):>8}  {h['op']}: {h['reason']}")
    for g in info["groups"]:
        state = ("approx." if g.get("approximate") else "prunable") if g["prunable"] else "blocked"
        ops = ", ".join(g["nodes"][:6]) + (" ..." if len(g["nodes"]) > 6 else "")
        print(f"  #{g['id']:<4} {g['size']:>6} ch  {state:<8}  {ops}")
        if not g["prunable"] and g["blocked"]:
            b = g["blocked"][0]
            print(f"         {b['node']} ({b['op']}): {b['reason']}")
    if info["blocked"]:
        print("blocked ops:")
        for b in info["blocked"]:
            print(f"  {b['node']} ({b['op']}): {b['reason']}")
    print("by op type:")
    for op, c in sorted(info["by_op"].items()):
        print(
            f"  {op:<24} params {format_count(c['params']):>8}   MACs {format_count(c['macs']):>8}"
        )
    return 0


# -- prune ----------------------------------------------------------------------------------


def _collect(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.onnx") if q.is_file())
            if not found:
                raise InputError(f"{p}: folder contains no .onnx models")
            files.extend(found)
        else:
            files.append(p)  # a missing file is reported per model
    seen: dict[str, Path] = {}
    unique = []
    for f in files:
        key = str(f.resolve())
        if key not in seen:
            seen[key] = f
            unique.append(f)
    return unique


def _targets(files: list[Path], output: str, create: bool = True) -> list[Path]:
    out = Path(output)
    single_file = len(files) == 1 and (out.suffix == ".onnx" or (out.exists() and out.is_file()))
    if single_file:
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: output must be a folder when pruning several models")
        names: dict[str, Path] = {}
        targets = []
        for f in files:
            if f.name in names:
                raise InputError(
                    f"{f}: same file name as {names[f.name]}: outputs would collide in {out}"
                )
            names[f.name] = f
            targets.append(out / f.name)
    for f, t in zip(files, targets, strict=True):
        if f.exists() and t.exists() and os.path.samefile(f, t) or f.resolve() == t.resolve():
            raise InputError(f"{t}: output path is the input file; choose another output")
    folder = targets[0].parent
    if not create:
        return targets
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{folder}: cannot create the output folder ({e.strerror})") from e
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: output folder is not writable")
    return targets


def _progress(items, args, desc: str, total: int | None = None):
    """A progress bar on stderr when it is a terminal (None / the items otherwise)."""
    if args.quiet or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="model", file=sys.stderr, total=total)


def _sparsify(args) -> int:
    from spa_nm import api, io
    from spa_nm.nm import NMSpec
    from spa_nm.report import write_json

    spec = NMSpec.parse(args.pattern)
    files = _collect(args.inputs)
    targets = _targets(files, args.output)
    inputs = [str(f) for f in files]
    entries, worst = [], 0
    for src, dst in _progress(list(zip(files, targets, strict=True)), args, "sparsifying"):
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
        try:
            model, rep = api.sparsify(api.load(src), spec, ignore=tuple(args.ignore))
            io.save(model, dst, inputs=inputs)
            entry.update({"status": "ok", "error": None, **rep})
        except SpaNmError as e:
            if args.debug:
                raise
            worst = max(worst, e.exit_code)
            entry.update({"status": "error", "error": str(e)})
            print(f"spa-nm: error: {e}", file=sys.stderr)
        except Exception as e:  # one model's bug must not stop the batch
            if args.debug:
                raise
            worst = max(worst, 1)
            entry.update({"status": "error", "error": f"{src}: internal error: {type(e).__name__}: {e}"})
            print(f"spa-nm: error: {entry['error']}", file=sys.stderr)
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        entries.append(entry)
    if not args.quiet:
        head = ("model", "status", "pattern", "layers sparsified/skipped", "sparsity", "s")
        rows = [head]
        for e in entries:
            ok = e["status"] == "ok"
            rows.append((Path(e["input"]).name, e["status"], str(spec),
                         f"{len(e['layers_sparsified'])}/{len(e['layers_skipped'])}" if ok else e["error"][:50],
                         f"{e['sparsity']:.1%}" if ok else "", f"{e['seconds']:.2f}"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for k, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if k == 0:
                print("  ".join("-" * w for w in widths))
        if args.verbose:
            for e in entries:
                for sk in e.get("layers_skipped", []):
                    print(f"  {Path(e['input']).name}: skipped {sk['node']} ({sk['op']}): {sk['reason']}")
    if args.report:
        write_json({"models": entries}, args.report)
    if len(files) == 1:
        return worst
    return 1 if worst else 0


def _options(args) -> dict[str, Any]:
    return {
        "ratio": args.ratio,
        "criterion": args.criterion,
        "global_ranking": args.global_ranking,
        "round_to": args.round_to,
        "ignore": list(args.ignore),
        "aggregation": args.aggregation,
        "seed": args.seed,
        "dry_run": args.dry_run,
        "hessian": args.hessian,
        "calibration": args.calibration,
        "attention": args.attention,
        "allow_approximate": args.allow_approximate,
        "ratio_for": [list(p) for p in args.ratio_for],
        "data": args.data,
        "steps": args.steps,
        "schedule": args.schedule,
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
    }


def prune_one(src: str, dst: str, opts: dict[str, Any], inputs: list[str], reraise: bool = False) -> dict[str, Any]:
    """Load, prune and save one model; returns its report entry. Errors become the entry's
    ``error`` (with ``reraise``, as under ``--debug``, they propagate)."""
    from spa_nm import api, io

    t0 = time.perf_counter()
    entry: dict[str, Any] = {"input": str(src), "output": None if opts.get("dry_run") else str(dst)}
    try:
        model = api.load(src)
        res = api.prune(
            model,
            opts["ratio"],
            opts["criterion"],
            global_ranking=opts["global_ranking"],
            round_to=opts["round_to"],
            ignore=tuple(opts["ignore"]),
            aggregation=opts["aggregation"],
            seed=opts["seed"],
            hessian=opts.get("hessian"),
            calibration=opts.get("calibration"),
            attention=opts.get("attention", "heads"),
            allow_approximate=bool(opts.get("allow_approximate", False)),
            ratio_for=[tuple(p) for p in opts.get("ratio_for", [])],
            data=opts.get("data"),
            steps=opts.get("steps", 1),
            schedule=opts.get("schedule", "geometric"),
            finetune_epochs=opts.get("finetune_epochs", 0),
            finetune={"lr": opts["finetune_lr"]} if opts.get("finetune_epochs") else None,
        )
        if not opts.get("dry_run"):
            io.save(res.model, dst, inputs=inputs)
        entry.update({"status": "ok", "error": None, "exit_code": 0})
        entry.update(res.report)
    except SpaNmError as e:
        if reraise:
            raise
        entry.update({"status": "error", "error": str(e), "exit_code": e.exit_code})
    except Exception as e:  # a bug on one model must not stop the batch
        if reraise:
            raise
        entry.update({"status": "error", "error": f"{src}: internal error: {type(e).__name__}: {e}", "exit_code": 1})
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    return entry


def _run_isolated(jobs: list[tuple[str, str]], opts, inputs: list[str], workers: int, args) -> list[dict[str, Any]]:
    """One worker process per model, at most ``workers`` at a time: a crash or an
    out-of-memory kill in one model becomes that model's error entry."""
    import subprocess

    pending = list(enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    done: dict[int, dict[str, Any]] = {}
    bar = _progress(None, args, "pruning", total=len(jobs))
    try:
        while pending or running:
            while pending and len(running) < workers:
                k, (src, dst) = pending.pop(0)
                payload = json.dumps({"src": str(src), "dst": str(dst), "opts": opts, "inputs": inputs})
                proc = subprocess.Popen(
                    [sys.executable, "-m", "spa_nm._worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                proc.stdin.write(payload)
                proc.stdin.close()
                running[k] = (proc, str(src))
            for k, (proc, src) in list(running.items()):
                if proc.poll() is None:
                    continue
                out = proc.stdout.read()
                proc.stdout.close()
                proc.stderr.close()
                try:
                    done[k] = json.loads(out.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    why = f"worker died with signal {-proc.returncode}" if proc.returncode < 0 else f"worker exited with code {proc.returncode}"
                    done[k] = {"input": src, "output": None, "status": "error", "error": f"{src}: {why}", "exit_code": 1}
                del running[k]
                if bar is not None:
                    bar.update(1)
            time.sleep(0.02)
    finally:
        for proc, _ in running.values():
            proc.terminate()
        if bar is not None:
            bar.close()
    return [done[k] for k in sorted(done)]


def _prune(args) -> int:
    from spa_nm.plan import PruneConfig
    from spa_nm.report import summary_table, write_json

    PruneConfig(args.ratio, args.criterion, args.global_ranking, args.round_to, tuple(args.ignore), args.aggregation)
    _check_obspa_args(args)
    _check_schedule_args(args)
    files = _collect(args.inputs)
    targets = _targets(files, args.output, create=not args.dry_run)
    if args.report:
        rp = Path(args.report).resolve()
        if any(rp == f.resolve() for f in files):
            raise InputError(f"{args.report}: report path is an input file")
    opts = _options(args)
    inputs = [str(f) for f in files]
    jobs = list(zip(files, targets, strict=True))
    if args.jobs > 1 and len(jobs) > 1:
        entries = _run_isolated(jobs, opts, inputs, args.jobs, args)
    else:
        entries = []
        for src, dst in _progress(jobs, args, "pruning"):
            entries.append(prune_one(str(src), str(dst), opts, inputs, reraise=args.debug))
    for e in entries:
        if e["status"] != "ok":
            print(f"spa-nm: error: {e['error']}", file=sys.stderr)
    if not args.quiet:
        print(summary_table(entries))
        for e in entries:
            err = (e.get("approximate") or {}).get("error") or {}
            if err.get("measured"):
                print(
                    f"{e['input']}: {len(e['approximate']['groups'])} approximate group(s) "
                    f"pruned; output error on random inputs: max {err['max_abs']:.3g}, "
                    f"mean {err['mean_abs']:.3g} (outputs up to {err['max_abs_reference']:.3g})"
                )
        if args.dry_run:
            print("dry run: no model written")
        if args.verbose or args.dry_run:
            for e in entries:
                for b in e.get("blocked", [])[:20]:
                    print(f"  {Path(e['input']).name}: blocked {b['node']} ({b['op']}): {b['reason']}")
    worst = max((e.get("exit_code", 1) for e in entries if e["status"] != "ok"), default=0)
    for e in entries:
        e.pop("exit_code", None)
    if args.report:
        write_json({"models": entries}, args.report)
    if len(files) == 1:
        return worst
    return 1 if worst else 0


# -- obspa options and sensitivity ----------------------------------------------------------


def _add_obspa_args(parser) -> None:
    from spa_nm.obspa import DEFAULT_HESSIAN, HESSIANS

    parser.add_argument(
        "--hessian",
        choices=HESSIANS,
        default=None,
        help=f"how --criterion obspa estimates layer inputs (default: {DEFAULT_HESSIAN}; "
        "'data' when --calibration is given)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DATA.npz",
        help="calibration inputs for --criterion obspa (arrays by input name, or x_train)",
    )


def _check_obspa_args(args) -> None:
    from spa_nm.errors import ConfigError

    if args.criterion != "obspa" and (args.hessian or args.calibration):
        raise ConfigError("--hessian and --calibration apply to --criterion obspa only")
    if args.calibration and not Path(args.calibration).is_file():
        raise InputError(f"{args.calibration}: no such file")


# -- data-driven criteria, ratio overrides, iterative pruning, regimes ------------------------

_EPILOG_REGIME = """regimes (METHODS.md §1.8, §4.1):
  prune-train            prune at init (snip, l2, random), then train --epochs
  train-prune-finetune   [train --train-epochs] -> prune -> fine-tune --epochs
  train-prune            [train --train-epochs] -> prune (obspa; baseline l2), no fine-tuning
  scratch-e              pruned architecture, weights re-drawn, trained --epochs
  scratch-b              the same for --epochs x MACs(dense)/MACs(pruned), capped at 2x
examples:
  spa-nm regime prune-train init.onnx --data digits.npz --ratio 0.5 --criterion snip --epochs 20 -o p.onnx
  spa-nm regime train-prune trained.onnx --data digits.npz --ratio 0.3 --criterion obspa -o p.onnx
  spa-nm regime scratch-b trained.onnx --data digits.npz --ratio 0.5 --epochs 20 -o s.onnx
"""


def _ratio_for(text: str) -> tuple[str, float]:
    pattern, eq, value = text.rpartition("=")
    if not eq or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=RATIO, got {text!r}")
    return pattern, _ratio(value)


def _add_schedule_args(parser) -> None:
    from spa_nm.iterative import SCHEDULES

    parser.add_argument(
        "--ratio-for", action="append", type=_ratio_for, default=[], metavar="PATTERN=R",
        help="ratio R for the groups touching nodes that match the glob PATTERN (repeatable; "
        "--ignore wins, then the last matching --ratio-for, then --ratio)",
    )  # fmt: skip
    parser.add_argument(
        "--data", metavar="DATA.npz",
        help="training arrays (by input name + labels, or x_train/y_train) for --criterion "
        "taylor/hessian/snip (default: random inputs labelled by the model) and --finetune-epochs",
    )  # fmt: skip
    parser.add_argument("--steps", type=_positive, default=1, metavar="K", help="prune in K rounds, re-scoring each round (default: 1)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="geometric", help="how the K rounds approach --ratio (default: geometric)")
    parser.add_argument("--finetune-epochs", type=int, default=0, metavar="E", help="fine-tune (dense) E epochs on --data after each round (default: 0)")
    parser.add_argument("--finetune-lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate of that fine-tuning (default: 0.001)")


def _check_schedule_args(args) -> None:
    from spa_nm.errors import ConfigError
    from spa_nm.importance import DATA_DRIVEN

    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.data and not Path(args.data).is_file():
        raise InputError(f"{args.data}: no such file")
    if args.finetune_epochs and not args.data:
        raise ConfigError("--finetune-epochs needs --data")
    if args.data and args.criterion not in DATA_DRIVEN and not args.finetune_epochs:
        raise ConfigError(
            f"--data applies to --criterion {'/'.join(DATA_DRIVEN)} and to --finetune-epochs"
        )


def _add_regime_parser(sub, common) -> None:
    from spa_nm.importance import AGGREGATIONS, CRITERIA
    from spa_nm.plan import DEFAULT_ROUND_TO
    from spa_nm.regimes import REGIMES

    pr = sub.add_parser(
        "regime", parents=[common], help="prune at a time (the three regimes) or train a scratch baseline",
        epilog=_EPILOG_REGIME, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    pr.add_argument("regime", choices=REGIMES)
    pr.add_argument("model", help="an ONNX file (initial weights for prune-train, else trained unless --train-epochs)")
    pr.add_argument("--data", required=True, metavar="TRAIN.npz", help="labelled training arrays (by input name + labels, or x_train/y_train[/x_val/y_val])")
    pr.add_argument("--val", metavar="VAL.npz", help="validation arrays (default: x_val/y_val of --data, or a seeded 0.2 split)")
    pr.add_argument("-o", "--output", required=True, help="output ONNX file")
    pr.add_argument("--ratio", type=_ratio, required=True, help="fraction of channels to remove per group, in [0, 1)")
    pr.add_argument("--criterion", choices=sorted(CRITERIA), default="l2", help="importance criterion (default: l2)")
    pr.add_argument("--epochs", type=int, default=0, help="training epochs after pruning (scratch: the dense model's epochs)")
    pr.add_argument("--train-epochs", type=int, default=0, help="train the dense model first (regimes 2 and 3; default: 0, the model is trained)")
    pr.add_argument("--reinit", action="store_true", help="prune-train: re-draw the weights first (seeded)")
    pr.add_argument("--steps", type=_positive, default=1, metavar="K", help="prune in K rounds (default: 1)")
    pr.add_argument("--global", dest="global_ranking", action="store_true", help="rank normalized scores across all groups")
    pr.add_argument("--round-to", type=_positive, default=DEFAULT_ROUND_TO, metavar="K", help=f"keep surviving counts multiples of K (default: {DEFAULT_ROUND_TO})")
    pr.add_argument("--aggregation", choices=AGGREGATIONS, default="sum", help="how member slices combine (default: sum)")
    pr.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns whose groups are kept")
    pr.add_argument("--lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate (default: 0.001)")
    pr.add_argument("--batch-size", type=_positive, default=64, help="samples per step (default: 64)")
    pr.add_argument("--seed", type=int, default=0, help="seed of training, random criterion and re-initialisation (default: 0)")
    pr.add_argument("--threads", type=_positive, metavar="N", help="torch CPU threads (default: torch's)")
    pr.add_argument("--report", metavar="FILE.json", help="write a JSON report")


def _regime(args) -> int:
    from spa_nm import api, io
    from spa_nm.errors import ConfigError
    from spa_nm.regimes import run_regime
    from spa_nm.report import write_json

    for f in (args.model, args.data, args.val):
        if f and not Path(f).is_file():
            raise InputError(f"{f}: no such file")
    if args.epochs < 0 or args.train_epochs < 0:
        raise ConfigError("--epochs and --train-epochs must be >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = api.load(args.model)
    prune_kw = {"global_ranking": args.global_ranking, "round_to": args.round_to, "steps": args.steps,
                "aggregation": args.aggregation, "ignore": tuple(args.ignore)}  # fmt: skip
    new, report = run_regime(
        args.regime, model, args.data, val=args.val, ratio=args.ratio, criterion=args.criterion,
        epochs=args.epochs, train_epochs=args.train_epochs, seed=args.seed, reinit=args.reinit,
        prune=prune_kw, train={"lr": args.lr, "batch_size": args.batch_size},
    )  # fmt: skip
    io.save(new, args.output, inputs=[args.model, args.data] + ([args.val] if args.val else []))
    report["input"], report["output"] = args.model, args.output
    if args.report:
        write_json(report, args.report)
    if not args.quiet:
        dense = report.get("val_dense", {}).get("accuracy")
        print(
            f"{args.regime} {args.criterion} ratio {args.ratio}: params {report['prune']['params_before']} -> "
            f"{report['params']}, val accuracy "
            + (f"dense {dense:.4f}, " if dense is not None else "")
            + f"pruned {report['val_pruned']['accuracy']:.4f}, final {report['val_accuracy']:.4f}"
        )
    return 0


def _ratios(text: str) -> list[float]:
    out = [_ratio(t) for t in text.split(",") if t.strip()]
    if not out or any(r == 0 for r in out):
        raise argparse.ArgumentTypeError(f"ratios must be a comma list in (0, 1), got {text!r}")
    return out


def _add_sensitivity_parser(sub, common) -> None:
    from spa_nm.importance import CRITERIA
    from spa_nm.sensitivity import DEFAULT_RATIOS, PER

    pz = sub.add_parser(
        "sensitivity",
        parents=[common],
        help="prune each channel group alone at several ratios and measure the output error",
        epilog="examples:\n  spa-nm sensitivity model.onnx -o sens/\n"
        "  spa-nm sensitivity model.onnx --data val.npz --ratios 0.2,0.4 --per layer\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pz.add_argument("model", help="an ONNX file")
    pz.add_argument("-o", "--output", metavar="OUT_DIR", help="folder for sensitivity.json and .png (default: <model>_sensitivity)")
    pz.add_argument("--data", metavar="DATA.npz", help="evaluation inputs by name (or x_val), optional labels; default: random")
    pz.add_argument("--ratios", type=_ratios, default=list(DEFAULT_RATIOS), metavar="R1,R2,...",
                    help=f"ratios of each group to remove (default: {','.join(map(str, DEFAULT_RATIOS))})")  # fmt: skip
    pz.add_argument("--criterion", choices=sorted(CRITERIA), default="l2", help="importance criterion (default: l2)")
    pz.add_argument("--per", choices=PER, default="group", help="one row per channel group or per producer layer (default: group)")
    pz.add_argument("--samples", type=_positive, default=32, help="inputs evaluated (default: 32)")
    pz.add_argument("--round-to", type=_positive, default=1, metavar="K", help="keep surviving counts multiples of K (default: 1)")
    pz.add_argument("--seed", type=int, default=0, help="seed of random inputs and criterion (default: 0)")
    _add_obspa_args(pz)


def _sensitivity(args) -> int:
    from spa_nm import api
    from spa_nm.sensitivity import format_table, sensitivity, write_outputs

    _check_obspa_args(args)
    if args.data and not Path(args.data).is_file():
        raise InputError(f"{args.data}: no such file")
    src = Path(args.model)
    out = Path(args.output) if args.output else Path(f"{src.stem}_sensitivity")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output must be a folder")
    model = api.load(src)
    res = sensitivity(model, args.ratios, args.criterion, per=args.per, data=args.data, samples=args.samples,
                      round_to=args.round_to, seed=args.seed, hessian=args.hessian, calibration=args.calibration)  # fmt: skip
    res["model"] = str(src)
    written = write_outputs(res, out)
    if not args.quiet:
        print(format_table(res))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
