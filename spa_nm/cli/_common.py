"""Helpers shared by the ``spa-nm`` commands: argument types, input collection and output
paths, progress bars, and the checks of options that several commands take."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from spa_nm.errors import InputError


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


def _ratio_for(text: str) -> tuple[str, float]:
    pattern, eq, value = text.rpartition("=")
    if not eq or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=RATIO, got {text!r}")
    return pattern, _ratio(value)


def _ratios(text: str) -> list[float]:
    out = [_ratio(t) for t in text.split(",") if t.strip()]
    if not out or any(r == 0 for r in out):
        raise argparse.ArgumentTypeError(f"ratios must be a comma list in (0, 1), got {text!r}")
    return out


def _collect(inputs: list[str]) -> list[str]:
    """The model files of ``inputs`` (files, and folders searched for ``*.onnx``), each once,
    spelled as the user wrote it (a folder's files joined to the folder as written), so that
    messages name them so."""
    files: list[tuple[Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.onnx") if q.is_file())
            if not found:
                raise InputError(f"{raw}: folder contains no .onnx models")
            files.extend((q, os.path.join(raw, str(q.relative_to(p)))) for q in found)
        else:
            files.append((p, raw))  # a missing file is reported per model
    seen: set[str] = set()
    unique = []
    for f, shown in files:
        key = str(f.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(shown)
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


def _check_obspa_args(args) -> None:
    from spa_nm.errors import ConfigError

    if args.criterion != "obspa" and (args.hessian or args.calibration):
        raise ConfigError("--hessian and --calibration apply to --criterion obspa only")
    if args.calibration and not Path(args.calibration).is_file():
        raise InputError(f"{args.calibration}: no such file")


# -- signals: SIGTERM unwinds like Ctrl-C (temporaries removed, finished outputs kept) and the
# exit code says which signal (128 + signum) -------------------------------------------------

_received: list[int] = []  # the signals received, in order


def _on_signal(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt and are remembered for `interrupted_by`."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (embedded use)
            pass


def interrupted_by() -> int:
    """The signal number behind the last KeyboardInterrupt (SIGINT when none was recorded)."""
    return _received[-1] if _received else int(signal.SIGINT)


@contextlib.contextmanager
def signals_held(reraise: bool = True) -> Iterator[None]:
    """SIGTERM and SIGINT arriving inside the block are remembered, not raised: a child process
    is registered before it can be lost, cleanup runs to its end. With ``reraise``, one that
    arrived is raised (as KeyboardInterrupt) on leaving."""
    held: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread: nothing to hold
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.extend(held)
    if held and reraise:
        raise KeyboardInterrupt
