"""One worker process per model (``--jobs N``, ``--timeout S``): a crash, an out-of-memory kill
or a timeout is that model's entry, and the batch goes on.

Nothing travels through a pipe: the job is a file the worker reads as its stdin, and its
stdout (the report entry, as the last line) and stderr go to files, so a large entry (a model
with thousands of blocked ops) cannot fill a pipe nobody reads. A worker past ``--timeout``, and
every worker when the batch itself is interrupted, gets SIGTERM (it unwinds like Ctrl-C, so
`spa_nm.io.save` removes its temporary), then SIGKILL after a grace period; the temporary a
killed worker may have left in its output folder is removed here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spa_nm.cli._common import _progress, signals_held

__all__ = ["run_isolated"]

# seconds a worker has to exit after SIGTERM before it is killed
GRACE_S = 3.0
_POLL_S = 0.02


class _Worker:
    def __init__(self, k: int, src: str, dst: str, scratch: Path, payload: dict[str, Any]) -> None:
        self.k, self.src, self.dst = k, src, dst
        job = scratch / f"{k}.json"
        job.write_text(json.dumps(payload))
        self.out, self.err = scratch / f"{k}.out", scratch / f"{k}.err"
        self.started = time.monotonic()
        self.wall = time.time()
        with open(job) as stdin, open(self.out, "w") as stdout, open(self.err, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spa_nm._worker"], stdin=stdin, stdout=stdout, stderr=stderr
            )

    def entry(self) -> dict[str, Any]:
        """The worker's report entry (or an error entry saying how it died)."""
        lines = self.out.read_text(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (ValueError, IndexError):
            code = self.proc.returncode
            why = f"worker died with signal {-code}" if code < 0 else f"worker exited with code {code}"
            last = [ln for ln in self.stderr_lines() if ln.strip()]
            if last and code > 0:
                why += f" ({last[-1].strip()[:200]})"
            return _failed(self.src, why, time.monotonic() - self.started)

    def stderr_lines(self) -> list[str]:
        try:
            return self.err.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def forward_warnings(self) -> None:
        """The worker's own log lines (``spa-nm: warning: ...``) reach the user; library noise and
        tracebacks stay in its file."""
        for ln in self.stderr_lines():
            if ln.startswith("spa-nm: ") and not ln.startswith("spa-nm: error"):
                print(ln, file=sys.stderr)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; then its temporaries are removed."""
        stop_all([self])


def stop_all(workers: list[_Worker]) -> None:
    alive = [w for w in workers if w.proc.poll() is None]
    for w in alive:
        with contextlib.suppress(OSError):
            w.proc.terminate()
    deadline = time.monotonic() + GRACE_S
    for w in alive:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                w.proc.kill()
            w.proc.wait()
    for w in workers:
        remove_temporaries(Path(w.dst), w.wall)


def remove_temporaries(dst: Path, since: float) -> None:
    """Remove what `spa_nm.io.save` of ``dst`` leaves when its process is killed: a
    ``.spa_nm-*`` folder beside ``dst``, made since ``since``, holding nothing but ``dst``'s
    model and data files (so another writer's temporaries are left alone)."""
    mine = {dst.name, dst.name + ".data"}
    try:
        candidates = list(dst.parent.glob(".spa_nm-*"))
    except OSError:
        return
    for p in candidates:
        try:
            if not p.is_dir() or p.is_symlink() or p.stat().st_mtime < since - 1:
                continue
            if {c.name for c in p.iterdir()} <= mine:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue


def _failed(src: str, why: str, seconds: float, status: str = "error") -> dict[str, Any]:
    return {"input": src, "output": None, "status": status, "error": f"{src}: {why}", "exit_code": 1,
            "seconds": round(seconds, 4)}  # fmt: skip


def run_isolated(
    command: str,
    jobs: list[tuple[str, str]],
    opts: dict[str, Any],
    inputs: list[str],
    workers: int,
    args,
    timeout: float | None = None,
    desc: str = "pruning",
) -> list[dict[str, Any]]:
    """Run ``command`` (prune or sparsify) on every (input, output) pair, at most ``workers``
    at once; returns the report entries in the order of ``jobs``."""
    scratch = Path(tempfile.mkdtemp(prefix="spa_nm-jobs-"))
    level = logging.getLogger().getEffectiveLevel()
    pending = list(enumerate(jobs))
    running: dict[int, _Worker] = {}
    done: dict[int, dict[str, Any]] = {}
    bar = _progress(None, args, desc, total=len(jobs))

    def finish(k: int, entry: dict[str, Any]) -> None:
        done[k] = entry
        del running[k]
        if bar is not None:
            bar.update(1)

    try:
        while pending or running:
            while pending and len(running) < workers:
                k, (src, dst) = pending.pop(0)
                payload = {"command": command, "src": str(src), "dst": str(dst), "opts": opts,
                           "inputs": inputs, "log_level": level}  # fmt: skip
                with signals_held():  # registered before an interrupt can orphan it
                    running[k] = _Worker(k, str(src), str(dst), scratch, payload)
            now = time.monotonic()
            for k, w in list(running.items()):
                if w.proc.poll() is not None:
                    if w.proc.returncode < 0:  # killed (out of memory?) maybe mid-write
                        remove_temporaries(Path(w.dst), w.wall)
                    w.forward_warnings()
                    finish(k, w.entry())
                elif timeout is not None and now - w.started > timeout:
                    w.stop()
                    finish(k, _failed(w.src, f"timed out after {timeout:g} s", now - w.started, "timeout"))
            if running:
                time.sleep(_POLL_S)
    finally:
        with signals_held(reraise=False):  # a second signal must not cut the cleanup short
            stop_all(list(running.values()))
            shutil.rmtree(scratch, ignore_errors=True)
            if bar is not None:
                bar.close()
    return [done[k] for k in sorted(done)]
