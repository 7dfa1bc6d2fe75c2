"""``spa-nm verify`` and ``spa-nm bench``: onnxruntime comparisons and timings."""

from __future__ import annotations

import json
from pathlib import Path

from spa_nm.errors import InputError


def _verify(args) -> int:
    from spa_nm import runtime
    from spa_nm.cli._input import check_file

    for p in (args.original, args.candidate):
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
        check_file(p)
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
    from spa_nm.cli._input import check_file

    for p in args.models:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file")
        check_file(p)
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
