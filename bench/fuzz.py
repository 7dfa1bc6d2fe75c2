"""Run the pruning properties on many generated graphs (spa_nm.fuzz) with a fixed seed.

    python bench/fuzz.py [--cases 2000] [--start 100000]

Writes ``bench/results/fuzz.md``: the count, the failures (must be 0), the time, the machine.
A failing case is shrunk to a minimal recipe and saved to ``tests/regressions/`` so the test
suite replays it from then on.
"""

from __future__ import annotations

import argparse
import os
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

from spa_nm import fuzz

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--start", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.md")
    args = ap.parse_args()
    os.environ["SPA_NM_STRICT_RULES"] = "1"  # a rule that raises is a failure, not a block
    failures, pruned = [], 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.start, args.start + args.cases):
            recipe = fuzz.random_recipe(seed, unknown_ops=seed % 3 == 0)
            try:
                pruned += fuzz.check(recipe, tmp)["removed"] > 0
            except Exception as e:
                msg = f"{type(e).__name__}: {str(e)[:200]}"

                def fails(r, tmp=tmp):
                    try:
                        fuzz.check(r, tmp)
                    except Exception:
                        return True
                    return False

                small = fuzz.shrink(recipe, fails)
                dst = ROOT / "tests" / "regressions" / f"seed{seed}.json"
                dst.write_text(json.dumps(small, indent=1) + "\n")
                failures.append((seed, msg, dst.name))
                print(f"seed {seed}: {msg} -> {dst}", flush=True)
    secs = time.perf_counter() - t0
    lines = [
        "# Fuzz: pruning properties on generated graphs",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Machine: {platform.machine()}, "
        f"{platform.platform()}, Python {platform.python_version()}.",
        f"Seeds {args.start} .. {args.start + args.cases - 1} (every third with an op that has no rule).",
        "",
        f"- cases: {args.cases}",
        f"- cases where something was pruned: {pruned}",
        f"- failures: {len(failures)}",
        f"- time: {secs:.1f} s ({1000 * secs / args.cases:.1f} ms per case)",
    ]
    lines += [f"- failure seed {s}: {m} (saved as tests/regressions/{n})" for s, m, n in failures]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
