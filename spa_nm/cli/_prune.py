"""``spa-nm inspect``, ``spa-nm prune`` and ``spa-nm sparsify`` (in this process, or one worker
process per model: `spa_nm.cli._batch`): the commands that read models and write pruned or
sparse ones in batches.

Every model ends as one report entry with a status: ``ok``; ``declined`` (``prune`` found
nothing to remove at a ratio above 0: nothing is written, exit 1); ``error``; ``timeout``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from spa_nm.cli._common import _check_obspa_args, _collect, _progress, _targets
from spa_nm.errors import InputError, SpaNmError, SurgeryError


def _inspect(args) -> int:
    from spa_nm import api
    from spa_nm.cli._input import load_input
    from spa_nm.report import format_count

    model, _ = load_input(args.model, force=args.force)
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


def _sparsify(args) -> int:
    from spa_nm.cli._batch import run_isolated
    from spa_nm.nm import NMSpec

    spec = NMSpec.parse(args.pattern)
    given = _collect(args.inputs)
    files = [Path(f) for f in given]
    targets = _targets(files, args.output)
    _check_report_path(args.report, files, targets)
    opts = {"pattern": str(spec), "ignore": list(args.ignore), "force": args.force,
            "method": args.method, "data": args.data, "calibration_samples": args.calibration_samples}  # fmt: skip
    inputs = list(given)
    jobs = [(f, str(t)) for f, t in zip(given, targets, strict=True)]
    if args.timeout is not None or (args.jobs > 1 and len(jobs) > 1):
        entries = run_isolated("sparsify", jobs, opts, inputs, min(args.jobs, len(jobs)), args,
                               timeout=args.timeout, desc="sparsifying")  # fmt: skip
    else:
        entries = [sparsify_one(src, dst, opts, inputs, reraise=args.debug)
                   for src, dst in _progress(jobs, args, "sparsifying")]  # fmt: skip
    _print_problems(entries)
    if not args.quiet:
        head = ("model", "status", "pattern", "layers sparsified/skipped", "sparsity", "s")
        rows = [head]
        for e in entries:
            ok = e["status"] == "ok"
            rows.append((Path(e["input"]).name, e["status"], str(spec),
                         f"{len(e['layers_sparsified'])}/{len(e['layers_skipped'])}" if ok else _cause(e)[:50],
                         f"{e['sparsity']:.1%}" if ok else "", f"{e.get('seconds', 0):.2f}"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for k, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if k == 0:
                print("  ".join("-" * w for w in widths))
        if args.verbose:
            for e in entries:
                for sk in e.get("layers_skipped", []):
                    print(f"  {Path(e['input']).name}: skipped {sk['node']} ({sk['op']}): {sk['reason']}")
    return _finish(entries, args.report, len(files))


def sparsify_one(src: str, dst: str, opts: dict[str, Any], inputs: list[str], reraise: bool = False) -> dict[str, Any]:
    """Load, sparsify and save one model; returns its report entry (as `prune_one`)."""
    from spa_nm import api
    from spa_nm.cli._input import load_input
    from spa_nm.nm import NMSpec
    from spa_nm.nm import sparsify as nm_sparsify

    t0 = time.perf_counter()
    entry: dict[str, Any] = {"input": str(src), "output": str(dst), "status": "ok", "error": None, "exit_code": 0}
    try:
        model, forced = load_input(src, force=bool(opts.get("force")))
        spec = NMSpec.parse(opts["pattern"])
        method, data = opts.get("method", "magnitude"), opts.get("data")
        samples = int(opts.get("calibration_samples", 128))
        if forced is None:
            model, rep = api.sparsify(model, spec, ignore=tuple(opts["ignore"]), method=method, data=data,
                                      calibration_samples=samples)  # fmt: skip
        else:  # api.sparsify would refuse the input's own checker error: _save compares it
            from spa_nm.oneshot import Calibration

            calib = Calibration(data=data, samples=samples) if method != "magnitude" or data else None
            model, rep = nm_sparsify(model, spec, tuple(opts["ignore"]), method=method, calibration=calib)
        _save(model, dst, inputs, forced)
        entry.update(rep)
    except SpaNmError as e:
        if reraise:
            raise
        _fail(entry, src, str(e), e.exit_code)
    except Exception as e:  # one model's bug must not stop the batch
        if reraise:
            raise
        _fail(entry, src, f"internal error: {type(e).__name__}: {_first_line(e)}", 1)
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    return entry


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
        "force": args.force,
    }


def prune_one(src: str, dst: str, opts: dict[str, Any], inputs: list[str], reraise: bool = False) -> dict[str, Any]:
    """Load, prune and save one model; returns its report entry. Errors become the entry's
    ``error`` (with ``reraise``, as under ``--debug``, they propagate); a model where nothing
    can be removed at the requested ratio is ``declined`` and not written."""
    from spa_nm import api
    from spa_nm.cli._input import load_input

    t0 = time.perf_counter()
    dry = bool(opts.get("dry_run"))
    entry: dict[str, Any] = {"input": str(src), "output": None if dry else str(dst), "status": "ok", "error": None, "exit_code": 0}
    try:
        model, forced = load_input(src, force=bool(opts.get("force")))
        res = api.prune(
            model,
            opts["ratio"],
            opts["criterion"],
            global_ranking=opts["global_ranking"],
            round_to=opts["round_to"],
            ignore=tuple(opts["ignore"]),
            aggregation=opts["aggregation"],
            seed=opts["seed"],
            check=forced is None,  # a forced input fails the checker already: _save compares
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
        why = _nothing_to_prune(res, opts)
        if why is not None:
            entry.update({"output": None, "status": "declined", "error": f"{src}: nothing to prune: {why}", "exit_code": 1})
        elif not dry:
            _save(res.model, dst, inputs, forced)
        entry.update(res.report)
    except SpaNmError as e:
        if reraise:
            raise
        _fail(entry, src, str(e), e.exit_code)
    except Exception as e:  # a bug on one model must not stop the batch
        if reraise:
            raise
        _fail(entry, src, f"internal error: {type(e).__name__}: {_first_line(e)}", 1)
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    return entry


def _save(model, dst: str, inputs: list[str], forced: str | None) -> None:
    """Write ``model``. For a forced input (``forced``: its checker error) only if the result
    fails the checker with that error or none: a new one is a SurgeryError, nothing written."""
    from spa_nm import io
    from spa_nm.cli._input import checkable_in_memory, checker_error, model_checker_error

    if forced is None:
        io.save(model, dst, inputs=inputs)
        return
    if checkable_in_memory(model):
        _same_checker_error(model_checker_error(model), forced)
        io.save(model, dst, inputs=inputs)
        return
    out = io.save(model, dst, inputs=inputs)  # too large for the in-memory checker
    try:
        _same_checker_error(checker_error(out), forced)
    except SurgeryError:
        for f in (out, out.with_name(out.name + ".data")):
            f.unlink(missing_ok=True)
        raise


def _same_checker_error(got: str | None, forced: str) -> None:
    if got is not None and got != forced:
        raise SurgeryError(f"the output fails the ONNX checker with a new error: {got}")


def _fail(entry: dict[str, Any], src: str, msg: str, code: int) -> None:
    entry.update({"output": None, "status": "error", "error": named(msg, src), "exit_code": code})


def _first_line(e: BaseException) -> str:
    from spa_nm.cli._input import first_line

    return first_line(e)


def named(msg: str, path: str) -> str:
    """``msg`` as ``PATH: cause``, with the input path as the user wrote it."""
    if msg.startswith(f"{path}:"):
        return msg
    norm = str(Path(path))
    if msg.startswith(f"{norm}:"):
        return path + msg[len(norm) :]
    return f"{path}: {msg}"


# reasons that block nearly every model somewhere: named only for groups nothing else kept
_IO_REASONS = ("graph input", "graph output")


def _nothing_to_prune(res, opts: dict[str, Any]) -> str | None:
    """Why no channel was removed although a ratio above 0 was asked for (None: some were, or
    ratio 0 asked for the model unchanged)."""
    asked = opts["ratio"] > 0 or any(r > 0 for _, r in opts.get("ratio_for", []))
    if not asked or res.report.get("groups_pruned"):
        return None
    groups = res.graph.groups if res.graph is not None else []
    prunable = [g for g in groups if g.prunable]
    if prunable:
        n = len(prunable)
        return (f"no channel of the {n} prunable group{'s' if n > 1 else ''} is removed at "
                f"--ratio {opts['ratio']:g} with --round-to {opts['round_to']}")  # fmt: skip
    blocked = [g for g in groups if g.blocked]
    if not blocked:
        return "no channel group has weights to remove"
    counts: Counter[str] = Counter()
    for g in blocked:
        reasons = {_reason(b) for b in g.blocked}
        counts.update({r for r in reasons if r not in _IO_REASONS} or reasons)
    top = sorted(counts.items(), key=lambda rc: (-rc[1], rc[0] in _IO_REASONS, rc[0]))
    shown = ", ".join(f"{r} ({n})" for r, n in top[:3])
    more = f", {len(top) - 3} other reasons" if len(top) > 3 else ""
    n = len(blocked)
    return f"{n} group{'s' if n > 1 else ''} blocked: {shown}{more}"


def _reason(b) -> str:
    """A blocked reason as the decline line counts it: ``no rule for ai.onnx::If`` (any opset),
    ``graph output``, or ``Op: reason``."""
    if b.op in _IO_REASONS:
        return b.op
    reason = re.sub(r" at opset \d+$", "", b.reason)
    if not re.search(rf"\b{re.escape(b.op)}\b", reason):
        reason = f"{b.op}: {reason}"
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _cause(e: dict[str, Any]) -> str:
    """An entry's message without the leading input path (the table names the model)."""
    msg = e.get("error") or ""
    head = f"{e.get('input')}: "
    return msg[len(head) :] if msg.startswith(head) else msg


def _print_problems(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e["status"] == "declined":
            print(f"spa-nm: {e['error']}", file=sys.stderr)
        elif e["status"] != "ok":
            print(f"spa-nm: error: {e['error']}", file=sys.stderr)


def _finish(entries: list[dict[str, Any]], report: str | None, n_files: int) -> int:
    """Write the report; the exit code: the model's own for one input, else 1 when any model
    did not end ok."""
    from spa_nm.report import write_json

    worst = max((e.get("exit_code", 1) for e in entries if e["status"] != "ok"), default=0)
    for e in entries:
        e.pop("exit_code", None)
    if report:
        write_json({"models": entries}, report)
    if n_files == 1:
        return worst
    return 1 if worst else 0


def _check_report_path(report: str | None, files: list[Path], targets: list[Path] | None = None) -> None:
    """Before anything is written: no model output (nor its .data) or report may lead to an
    input, an input's weights or another output of the run (`spa_nm.io.check_run_paths`)."""
    from spa_nm import io

    io.check_run_paths(targets or [], files, report)


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


def _prune(args) -> int:
    from spa_nm.cli._batch import run_isolated
    from spa_nm.plan import PruneConfig
    from spa_nm.report import summary_table

    PruneConfig(args.ratio, args.criterion, args.global_ranking, args.round_to, tuple(args.ignore), args.aggregation)
    _check_obspa_args(args)
    _check_schedule_args(args)
    given = _collect(args.inputs)
    files = [Path(f) for f in given]
    targets = _targets(files, args.output, create=not args.dry_run)
    _check_report_path(args.report, files, [] if args.dry_run else targets)
    opts = _options(args)
    inputs = list(given)
    jobs = [(f, str(t)) for f, t in zip(given, targets, strict=True)]
    if args.timeout is not None or (args.jobs > 1 and len(jobs) > 1):
        entries = run_isolated("prune", jobs, opts, inputs, min(args.jobs, len(jobs)), args, timeout=args.timeout)
    else:
        entries = [prune_one(src, dst, opts, inputs, reraise=args.debug) for src, dst in _progress(jobs, args, "pruning")]
    _print_problems(entries)
    if not args.quiet:
        print(summary_table(entries))
        for e in entries:
            err = (e.get("approximate") or {}).get("error") or {}
            if err.get("measured") and e["status"] == "ok":
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
    return _finish(entries, args.report, len(files))
