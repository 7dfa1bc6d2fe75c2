"""The rule registry: every registered op has a test case; unknown ops block; no overlaps."""

from __future__ import annotations

import onnx.parser
import pytest

from spa_nm.rules import _registry, lookup, supported_ops
from tests.rules.cases import C, model_text


def _ops_in_cases() -> set[str]:
    ops = set()
    for case in C:
        ops |= {n.op_type for n in onnx.parser.parse_model(model_text(case)).graph.node}
    return ops


def test_every_registered_op_has_a_case():
    covered = _ops_in_cases()
    missing = sorted({e.op_type for e in supported_ops()} - covered)
    assert not missing, f"rules without a test case in tests/rules/cases.py: {missing}"


def test_unknown_op_has_no_rule():
    assert lookup("", "LpNormalization", 13) is None
    assert lookup("com.example", "Relu", 13) is None  # domains are not mixed up


def test_opset_ranges_are_respected():
    assert lookup("", "Reshape", 5) is not None
    assert lookup("", "Reshape", 4) is None  # shape was an attribute before opset 5


def test_duplicate_or_overlapping_rule_raises():
    key = ("", "SpaNmTestOp")
    try:
        _registry.rule("SpaNmTestOp", opsets=(1, 10))(lambda n, c: None)
        with pytest.raises(ValueError, match="overlaps"):
            _registry.rule("SpaNmTestOp", opsets=(10, None))(lambda n, c: None)
        _registry.rule("SpaNmTestOp", opsets=(11, None))(lambda n, c: None)  # adjacent is fine
        assert lookup("", "SpaNmTestOp", 12) is not None
    finally:
        _registry._RULES.pop(key, None)
