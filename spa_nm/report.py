"""Report JSON and the summary table of batch commands."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from spa_nm.errors import InputError

__all__ = ["format_count", "summary_table", "write_json"]


def format_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _arrow(a: int | None, b: int | None) -> str:
    if a is None:
        return "-"
    if b is None or a == 0:
        return format_count(a)
    return f"{format_count(a)} → {format_count(b)} ({b / a:.0%})"


def summary_table(entries: list[dict[str, Any]]) -> str:
    """One row per model: params and MACs before → after, groups pruned/blocked, seconds; a
    model that is not ``ok`` (``declined``, ``error``, ``timeout``) shows its cause instead."""
    head = ("model", "status", "params", "MACs", "groups pruned/blocked", "s")
    rows = [head]
    for e in entries:
        name = Path(e.get("input", "?")).name
        status = e.get("status") or "error"
        if status != "ok":
            cause = e.get("error") or ""
            prefix = f"{e.get('input')}: "
            if cause.startswith(prefix):  # the row names the model already
                cause = cause[len(prefix) :]
            rows.append((name, status, cause[:60], "", "", f"{e.get('seconds', 0):.2f}"))
            continue
        blocked = e.get("groups_total", 0) - e.get("groups_prunable", 0)
        rows.append(
            (
                name,
                "ok",
                _arrow(e.get("params_before"), e.get("params_after")),
                _arrow(e.get("macs_before"), e.get("macs_after")),
                f"{e.get('groups_pruned', 0)}/{blocked}",
                f"{e.get('seconds', 0):.2f}",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".spa_nm-", suffix=".json", dir=p.parent)
    except OSError as e:
        raise InputError(f"{p}: cannot write the report ({e.strerror})") from e
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
