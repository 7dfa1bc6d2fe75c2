"""``spa-nm sensitivity``: each channel group pruned alone at several ratios."""

from __future__ import annotations

from pathlib import Path

from spa_nm.cli._common import _check_obspa_args
from spa_nm.errors import InputError


def _sensitivity(args) -> int:
    from spa_nm.cli._input import load_input
    from spa_nm.sensitivity import format_table, sensitivity, write_outputs

    _check_obspa_args(args)
    if args.data and not Path(args.data).is_file():
        raise InputError(f"{args.data}: no such file")
    src = Path(args.model)
    out = Path(args.output) if args.output else Path(f"{src.stem}_sensitivity")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output must be a folder")
    model, _ = load_input(args.model)
    res = sensitivity(model, args.ratios, args.criterion, per=args.per, data=args.data, samples=args.samples,
                      round_to=args.round_to, seed=args.seed, hessian=args.hessian, calibration=args.calibration)  # fmt: skip
    res["model"] = str(src)
    written = write_outputs(res, out)
    if not args.quiet:
        print(format_table(res))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
