"""Properties of pruning on generated graphs (spa_nm.fuzz), plus saved regressions.

Default CI runs 300 seeded cases (a few seconds); ``python bench/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spa_nm import fuzz

pytest.importorskip("onnxruntime")

REGRESSIONS = sorted((Path(__file__).parent / "regressions").glob("*.json"))


@pytest.mark.parametrize("block", range(6))
def test_generated_graphs(tmp_path, block):
    failures = []
    pruned = 0
    for seed in range(block * 50, block * 50 + 50):
        recipe = fuzz.random_recipe(seed, unknown_ops=seed % 3 == 0)
        try:
            pruned += fuzz.check(recipe, tmp_path)["removed"] > 0
        except Exception as e:  # collect all failures of the block, then report
            failures.append(f"seed {seed}: {type(e).__name__}: {str(e)[:200]}")
    assert not failures, "\n".join(failures)
    assert pruned >= 30, f"only {pruned}/50 generated graphs were pruned at all"


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression(tmp_path, path):
    fuzz.check(json.loads(path.read_text()), tmp_path)


def test_unknown_op_is_declined_with_reason(tmp_path):
    recipe = {"seed": 5, "opset": 13, "c0": 3, "hw": 6, "inputs": 1, "head": "gemm", "extra_outputs": 0,
              "steps": [{"kind": "unknown", "a": 0, "b": 0, "n": 1, "k": 0}]}  # fmt: skip
    import onnx

    import spa_nm

    built = fuzz.build(recipe)
    assert "LpNormalization" in built.ops
    p = tmp_path / "m.onnx"
    onnx.save(built.model, p)
    res = spa_nm.prune(spa_nm.load(p), 0.5)
    assert any(b["op"] == "LpNormalization" and "no rule" in b["reason"] for b in res.report["blocked"])
    fuzz.check(recipe, tmp_path)


def test_shrink_finds_the_minimal_step():
    recipe = fuzz.random_recipe(11)
    recipe["steps"] = [{"kind": "conv", "a": 0, "b": 0, "n": 1, "k": 0}] * 4 + [
        {"kind": "shuffle", "a": 0, "b": 0, "n": 2, "k": 0}
    ]

    def fails(r):  # a stand-in bug: any graph with a shuffle step fails
        return any(s["kind"] == "shuffle" for s in r["steps"])

    small = fuzz.shrink(recipe, fails)
    assert [s["kind"] for s in small["steps"]] == ["shuffle"]
