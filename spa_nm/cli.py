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
        default=1,
        metavar="K",
        help="keep channel counts multiples of K (default: 1)",
    )
    pp.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="node names or wildcard patterns whose groups are kept",
    )
    pp.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default: 0)")
    pp.add_argument("--report", metavar="FILE.json", help="write a JSON report")
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
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "prune":
            return _prune(args)
        parser.error(f"unknown command {args.command}")
    except SpaNmError as e:
        if args.debug:
            raise
        print(f"spa-nm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("spa-nm: interrupted", file=sys.stderr)
        return 130
    return 0


# -- inspect --------------------------------------------------------------------------------


def _inspect(args) -> int:
    from spa_nm import api
    from spa_nm.report import format_count

    model = api.load(args.model)
    info = api.inspect(model)
    info["model"] = args.model
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    prunable = [g for g in info["groups"] if g["prunable"]]
    print(f"{args.model}: {format_count(info['params'])} params, {format_count(info['macs'])} MACs")
    print(f"groups: {len(info['groups'])} ({len(prunable)} prunable)")
    for g in info["groups"]:
        state = "prunable" if g["prunable"] else "blocked"
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


def _targets(files: list[Path], output: str) -> list[Path]:
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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{folder}: cannot create the output folder ({e.strerror})") from e
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: output folder is not writable")
    return targets


def _progress(items, args, desc: str):
    if args.quiet or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="model", file=sys.stderr)


def _prune(args) -> int:
    from spa_nm import api, io
    from spa_nm.plan import PruneConfig
    from spa_nm.report import summary_table, write_json

    PruneConfig(
        args.ratio,
        args.criterion,
        args.global_ranking,
        args.round_to,
        tuple(args.ignore),
        args.aggregation,
    )
    files = _collect(args.inputs)
    targets = _targets(files, args.output)
    if args.report:
        rp = Path(args.report).resolve()
        if any(rp == f.resolve() for f in files):
            raise InputError(f"{args.report}: report path is an input file")
    entries: list[dict[str, Any]] = []
    worst = 0
    for src, dst in _progress(list(zip(files, targets, strict=True)), args, "pruning"):
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
        try:
            model = api.load(src)
            res = api.prune(
                model,
                args.ratio,
                args.criterion,
                global_ranking=args.global_ranking,
                round_to=args.round_to,
                ignore=tuple(args.ignore),
                aggregation=args.aggregation,
                seed=args.seed,
            )
            io.save(res.model, dst, inputs=files)
            entry.update({"status": "ok", "error": None})
            entry.update(res.report)
        except SpaNmError as e:
            if args.debug:
                raise
            worst = max(worst, e.exit_code)
            entry.update({"status": "error", "error": str(e)})
            print(f"spa-nm: error: {e}", file=sys.stderr)
        except Exception as e:  # one model's crash must not stop the batch
            if args.debug:
                raise
            worst = max(worst, 1)
            entry.update({"status": "error", "error": f"{src}: {type(e).__name__}: {e}"})
            print(f"spa-nm: error: {src}: {type(e).__name__}: {e}", file=sys.stderr)
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        entries.append(entry)
    if not args.quiet:
        print(summary_table(entries))
    if args.report:
        write_json({"models": entries}, args.report)
    if len(files) == 1 and worst:
        return worst
    return 1 if worst else 0
