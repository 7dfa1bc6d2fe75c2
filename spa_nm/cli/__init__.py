"""The ``spa-nm`` command line. Parses arguments, calls `spa_nm.api`, renders results.

Exit codes: 0 success; 1 a model failed during processing; 2 bad input or usage.

Layout: `_parser` builds the argparse parser (help texts, examples); `_common` holds the
argument types and helpers shared by commands (input collection, output paths, progress);
`_prune` runs inspect, prune and sparsify; `_train` finetune and regime; `_analysis`
sensitivity; `_runtime` verify and bench. Nothing here imports torch or onnxruntime at
import time.
"""

from __future__ import annotations

import logging
import os
import sys

from spa_nm.cli._analysis import _sensitivity
from spa_nm.cli._parser import build_parser as build_parser
from spa_nm.cli._prune import _inspect, _prune, _sparsify
from spa_nm.cli._prune import prune_one as prune_one
from spa_nm.cli._runtime import _bench, _verify
from spa_nm.cli._train import _finetune, _regime
from spa_nm.errors import SpaNmError

__all__ = ["main"]

log = logging.getLogger("spa_nm")


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
