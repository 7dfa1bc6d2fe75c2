"""Regenerate ``models/onnx/``: the small ONNX files the README Quickstart prunes.

    python models/make_onnx.py

Legacy exporter, single files (no external data), a few hundred KB in all.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHIPPED = ("resnet_basic", "mobilenet_v2", "shufflenet_v2", "vgg_bn", "unet", "mlp")


def main() -> int:
    from models.export import export_onnx

    out = ROOT / "models" / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.onnx"), *out.glob("*.onnx.data")]:
        if old.name.split(".")[0] not in SHIPPED:
            old.unlink()
            print(f"removed {old.relative_to(ROOT)}")
    total = 0
    for name in SHIPPED:
        p = export_onnx(name, out / f"{name}.onnx", exporter="legacy", external_data=False)
        size = p.stat().st_size
        total += size
        print(f"{p.relative_to(ROOT)}  {size / 1024:.0f} KB")
    print(f"total {total / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
