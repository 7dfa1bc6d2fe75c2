"""``spa-nm finetune`` (N:M schedules or dense, in torch) and ``spa-nm regime`` (prune at a
time, or a scratch baseline)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from spa_nm.cli._common import _EpochBar
from spa_nm.errors import InputError


def _finetune(args) -> int:
    from spa_nm import io
    from spa_nm.cli._input import load_input
    from spa_nm.nm import NMSpec
    from spa_nm.report import write_json
    from spa_nm.train.finetune import finetune

    spec = NMSpec.parse(args.pattern)
    inputs = [args.model, args.data] + ([args.val] if args.val else [])
    for p in inputs:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
    io.check_run_paths([args.output], inputs, args.report)
    model, _ = load_input(args.model)
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


def _regime(args) -> int:
    from spa_nm import io
    from spa_nm.cli._input import load_input
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
    io.check_run_paths([args.output], [f for f in (args.model, args.data, args.val) if f], args.report)
    model, _ = load_input(args.model)
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
