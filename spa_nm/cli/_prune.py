"""``spa-nm inspect``, ``spa-nm prune`` (one process or one worker per model) and
``spa-nm sparsify``: the commands that read models and write pruned or sparse ones in batches."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from spa_nm.cli._common import _check_obspa_args, _collect, _progress, _targets
from spa_nm.errors import InputError, SpaNmError


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
