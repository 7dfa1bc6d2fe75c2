"""The ``spa-nm`` command line. Parses arguments, calls `spa_nm.api`, renders results.

Exit codes: 0 success; 1 a model failed during processing or was declined (nothing to prune);
2 bad input or usage; 128 + N when stopped by signal N (130 Ctrl-C, 143 SIGTERM). Every error
is one ``spa-nm: error: FILE: cause`` line on stderr (``--debug`` shows the traceback).

Layout: `_parser` builds the argparse parser (help texts, examples); `_common` holds the
argument types and helpers shared by commands (input collection, output paths, progress,
signals); `_input` the checks every input model passes first; `_prune` runs inspect, prune and
sparsify, `_batch` their worker processes; `_train` finetune and regime; `_analysis`
sensitivity; `_runtime` verify and bench. Nothing here imports torch or onnxruntime at
import time.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from spa_nm.cli._analysis import _sensitivity
from spa_nm.cli._common import install_signal_handlers, interrupted_by
from spa_nm.cli._parser import build_parser as build_parser
from spa_nm.cli._prune import _inspect, _prune, _sparsify
from spa_nm.cli._prune import named as named
from spa_nm.cli._prune import prune_one as prune_one
from spa_nm.cli._prune import sparsify_one as sparsify_one
from spa_nm.cli._runtime import _bench, _verify
from spa_nm.cli._train import _finetune, _regime
from spa_nm.errors import ConfigError, SpaNmError

__all__ = ["main"]

log = logging.getLogger("spa_nm")

_COMMANDS = {
    "inspect": _inspect,
    "prune": _prune,
    "sparsify": _sparsify,
    "sensitivity": _sensitivity,
    "regime": _regime,
    "finetune": _finetune,
    "verify": _verify,
    "bench": _bench,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.ERROR
        if args.quiet
        else (logging.INFO if args.verbose or args.debug else logging.WARNING)
    )
    setup_logging(level)
    install_signal_handlers()
    try:
        return _COMMANDS[args.command](args)
    except SpaNmError as e:
        if args.debug:
            raise
        msg = str(e) if isinstance(e, ConfigError) else _about(args, str(e))  # options: no file
        print(f"spa-nm: error: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        sig = interrupted_by()
        print(f"spa-nm: interrupted ({signal.Signals(sig).name})", file=sys.stderr)
        return 128 + sig
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug: one line naming the file, the traceback with --debug
        if args.debug:
            raise
        from spa_nm.cli._input import first_line

        print(f"spa-nm: error: {_about(args, f'internal error: {type(e).__name__}: {first_line(e)}')}", file=sys.stderr)
        return 1


class _OneLine(logging.Formatter):
    """``spa-nm: warning: message`` on one line (libraries log multi-line reprs)."""

    def format(self, record: logging.LogRecord) -> str:
        text = " ".join(record.getMessage().split())
        if len(text) > 500:
            text = text[:497] + "..."
        line = f"spa-nm: {record.levelname.lower()}: {text}"
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: int) -> None:
    """Log records (and Python warnings) as one ``spa-nm: level: message`` line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)


def _paths(args) -> list[str]:
    """The paths the user gave, models first."""
    out = []
    for key in ("model", "original", "candidate", "inputs", "models", "data", "val", "calibration", "output", "report"):
        v = getattr(args, key, None)
        out.extend(v if isinstance(v, list) else [v] if v else [])
    return [str(p) for p in out]


def _subject(args) -> str | None:
    """The one model a command is about (None for a batch of several)."""
    if getattr(args, "model", None):
        return args.model
    if getattr(args, "original", None):
        return args.original
    many = getattr(args, "inputs", None) or getattr(args, "models", None) or []
    return many[0] if len(many) == 1 else None


def _about(args, msg: str) -> str:
    """``msg`` naming the file: as it is when it starts with a path the user gave (written as
    the user wrote it), else prefixed with the model the command is about."""
    for p in _paths(args):
        for form in (p, str(Path(p))):
            if msg.startswith(f"{form}:"):
                return p + msg[len(form) :]
    subject = _subject(args)
    return named(msg, subject) if subject else msg
