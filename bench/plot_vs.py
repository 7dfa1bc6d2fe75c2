"""Plot bench/results/vs_torch_pruning.json: latency vs parameters for the original, spa_nm and
Torch-Pruning (one marker per model; crashes shown as a cross at the original's position).

    python bench/plot_vs.py   # writes bench/results/vs_torch_pruning.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    data = json.loads((ROOT / "bench" / "results" / "vs_torch_pruning.json").read_text())
    rows = [r for r in data["rows"] if r["ranking"] == "uniform"]
    fig, ax = plt.subplots(figsize=(9, 6))
    for r in rows:
        p0, l0 = r["params"], r["latency_ms"]
        ax.scatter(p0, l0, color="black", marker="o", s=30)
        ax.annotate(r["model"], (p0, l0), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for tool, color, marker in (("spa_nm", "tab:blue", "s"), ("torch-pruning", "tab:orange", "^")):
            x = r[tool]
            if "error" in x:
                ax.scatter(p0, l0, color=color, marker="x", s=90)
                continue
            p1, l1 = p0 * x["params_ratio"], x["latency_ms"]
            ax.scatter(p1, l1, color=color, marker=marker, s=30)
            ax.plot([p0, p1], [l0, l1], color=color, alpha=0.3, lw=1)
    ax.scatter([], [], color="black", marker="o", label="original")
    ax.scatter([], [], color="tab:blue", marker="s", label="spa_nm (ONNX)")
    ax.scatter([], [], color="tab:orange", marker="^", label="Torch-Pruning (PyTorch)")
    ax.scatter([], [], color="gray", marker="x", label="crashed (at the original)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("onnxruntime CPU latency, ms (batch 1, 1 thread, median)")
    ax.set_title(f"Ratio {data['machine']['ratio']} uniform, group L2 — {data['machine']['date']}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    out = ROOT / "bench" / "results" / "vs_torch_pruning.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
