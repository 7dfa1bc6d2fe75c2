"""The README's Quickstart commands are the ones that work (the docs cannot rot)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands():
    blocks = quickstart()
    assert len(blocks) == 2
    install, tests = blocks
    assert install.startswith("pip install -e \".[cpu]\" && spa-nm prune models/onnx")
    assert tests == 'pip install torch==2.13.0 -e ".[cpu,train,test]" && pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, ".ci/run must run the README's test command"


def test_quickstart_prune_command_runs(tmp_path):
    cmd = quickstart()[0].split("&&", 1)[1].strip()
    args = shlex.split(cmd)
    assert args[0] == "spa-nm"
    # same command, with the outputs redirected into tmp_path
    args = [str(tmp_path / a) if a.startswith("pruned") else a for a in args[1:]]
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert len(report["models"]) == len(list((ROOT / "models" / "onnx").glob("*.onnx")))
    assert all(m["status"] == "ok" and m["params_after"] < m["params_before"] for m in report["models"])
