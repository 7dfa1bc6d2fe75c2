"""Every rule: prunes exactly (zero-group oracle) or blocks with the expected reason."""

from __future__ import annotations

import onnx
import pytest
from tests.helpers import model_from_text

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent
from tests.rules.cases import CASES, model_text


def _load(tmp_path, case):
    proto = model_from_text(model_text(case))
    onnx.checker.check_model(proto, full_check=True)
    p = tmp_path / f"{case.id}.onnx"
    onnx.save(proto, p)
    return spa_nm.load(p)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_rule_case(tmp_path, case_id):
    case = CASES[case_id]
    model = _load(tmp_path, case)
    res = spa_nm.prune(model, 0.5)
    reasons = [b["reason"] for b in res.report["blocked"]]
    # the producer conv's group (c1 and everything the body couples to it)
    dg = res.graph
    (group,) = [g for g in dg.groups if any(s.value == "c1" for s in g.slots)]
    if case.expect == "prune":
        assert group.prunable, f"c1's group is blocked: {[b.reason for b in group.blocked]}"
        assert group.id in res.plan.removed
        assert res.report["params_after"] < res.report["params_before"]
        check_model(res.model)
        if case.oracle:
            assert_prune_equivalent(model, res, atol=1e-5, rtol=1e-6)  # rtol: Exp & co reach hundreds
    else:
        want = case.expect.removeprefix("block:")
        assert not group.prunable, f"expected a block ({want}), got a prunable group"
        assert any(want in b.reason for b in group.blocked), (
            want,
            [b.reason for b in group.blocked],
            reasons,
        )
        assert group.id not in res.plan.removed
        check_model(res.model)
        if case.oracle:  # whatever else was pruned stays exact
            assert_prune_equivalent(model, res, atol=1e-5, rtol=1e-6)
