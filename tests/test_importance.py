"""Group criteria on hand-built graphs whose right answer is known (METHODS.md §1.5, §1.6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.errors import ConfigError
from spa_nm.facts import Slot
from spa_nm.importance import CRITERIA, SELF_NORMALIZED, lamp_normalize, score_group
from spa_nm.plan import PruneConfig, make_plan
from tests.helpers import model_from_text

HEAD = '<ir_version: 8, opset_import: ["" : 13]>'

# x -> Conv(w1, b1) -> BN(scale, ...) -> Relu -> Conv(w2, b2) -> Relu -> GAP -> Flatten -> Gemm
CHAIN = (
    HEAD
    + """
m (float[1, 3, 6, 6] input) => (float[1, 4] output)
<float[6, 3, 3, 3] w1, float[6] b1, float[6] scale, float[6] shift, float[6] mean, float[6] var,
 float[5, 6, 1, 1] w2, float[5] b2, float[4, 5] wf, float[4] bf>
{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
  n1 = BatchNormalization (c1, scale, shift, mean, var)
  r1 = Relu (n1)
  c2 = Conv (r1, w2, b2)
  r2 = Relu (c2)
  g = GlobalAveragePool (r2)
  f = Flatten (g)
  output = Gemm <transB = 1> (f, wf, bf)
}
"""
)


def load(tmp_path, text=CHAIN, **weights):
    p = tmp_path / "m.onnx"
    onnx.save(model_from_text(text, **weights), p)
    return spa_nm.load(p)


def group_of(dg, value):
    """The group holding channel slot value[1] and each channel's unit position."""
    g = dg.group_of(Slot(value, (1,)))
    return g, np.searchsorted(g.units, dg.elements(Slot(value, (1,))))


def chain_weights(dead: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(6).astype(np.float32) * 0.1,
        "scale": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "shift": np.zeros(6, np.float32),
        "mean": np.zeros(6, np.float32),
        "w2": rng.standard_normal((5, 6, 1, 1)).astype(np.float32),
    }
    if dead is not None:  # a channel with nothing in it: zero producer, norm scale and reader
        w["w1"][dead] = 0
        w["b1"][dead] = 0
        w["scale"][dead] = 0
        w["w2"][:, dead] = 0
    return w


@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp", "obspa", "bn", "fpgm"])
def test_zero_weight_channel_ranks_last(tmp_path, criterion):
    m = load(tmp_path, **chain_weights(dead=4))
    dg = spa_nm.analyze(m)
    g, pos = group_of(dg, "c1")
    assert g.prunable
    s, _ = score_group(dg, g, criterion)
    assert s.shape == (g.size,)
    others = np.delete(s, pos[4])
    assert s[pos[4]] < others.min(), f"{criterion}: {s}"


def test_bn_scores_are_absolute_gamma(tmp_path):
    w = chain_weights()
    w["scale"] = np.array([0.5, -3.0, 1.0, 0.1, -0.2, 2.0], np.float32)
    dg = spa_nm.analyze(load(tmp_path, **w))
    g, pos = group_of(dg, "c1")
    s, note = score_group(dg, g, "bn")
    assert note is None
    np.testing.assert_allclose(s[pos], np.abs(w["scale"]))
    assert np.argmin(s[pos]) == 3 and np.argmax(s[pos]) == 1  # -3 is the strongest


def test_fpgm_duplicated_filter_ranks_lowest(tmp_path):
    w = chain_weights()
    w1 = np.zeros((6, 3, 3, 3), np.float32)
    for c in range(5):  # orthogonal filters: every pairwise distance is sqrt(2)
        w1.reshape(6, -1)[c, c] = 1.0
    w1[5] = w1[2]  # channel 5 duplicates channel 2
    w["w1"] = w1
    dg = spa_nm.analyze(load(tmp_path, **w))
    g, pos = group_of(dg, "c1")
    s, _ = score_group(dg, g, "fpgm")
    dup = sorted(pos[[2, 5]].tolist())
    assert sorted(np.argsort(s)[:2].tolist()) == dup
    # the formula: mean distance to the other filters of the producer
    f = w1.reshape(6, -1).astype(np.float64)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1)).sum(1) / 5
    np.testing.assert_allclose(s[pos], d, rtol=1e-6)


def test_fpgm_matches_reference_on_random_weights(tmp_path):
    w = chain_weights(seed=3)
    dg = spa_nm.analyze(load(tmp_path, **w))
    g, pos = group_of(dg, "c1")
    f = w["w1"].reshape(6, -1).astype(np.float64)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1)).sum(1) / 5
    np.testing.assert_allclose(score_group(dg, g, "fpgm")[0][pos], d, rtol=1e-6)


def test_lamp_normaliser_by_hand():
    got = lamp_normalize(np.array([1.0, 4.0, 2.0, 0.0]))
    # ascending 0, 1, 2, 4: tails 7, 7, 6, 4
    np.testing.assert_allclose(got, [1 / 7, 1.0, 2 / 6, 0.0])


def test_lamp_is_l2_order_with_max_one(tmp_path):
    dg = spa_nm.analyze(load(tmp_path, **chain_weights(seed=5)))
    for g in dg.prunable_groups:
        lam = score_group(dg, g, "lamp")[0]
        l2 = score_group(dg, g, "l2")[0]
        assert lam.max() == pytest.approx(1.0)
        np.testing.assert_array_equal(np.argsort(lam, kind="stable"), np.argsort(l2, kind="stable"))
        np.testing.assert_allclose(lam, lamp_normalize(l2))


def test_lamp_global_ranking_uses_lamp_values(tmp_path):
    m = load(tmp_path, **chain_weights(seed=5))
    dg = spa_nm.analyze(m)
    groups = dg.prunable_groups
    assert "lamp" in SELF_NORMALIZED and len(groups) == 2
    plan = make_plan(dg, PruneConfig(0.5, "lamp", global_ranking=True, round_to=1))
    # reference: remove the lowest LAMP scores over both groups, at most size-1 per group
    entries = sorted((float(v), g.id) for g in groups for v in score_group(dg, g, "lamp")[0])
    target, counts = int(0.5 * sum(g.size for g in groups)), {g.id: 0 for g in groups}
    for _, gid in entries:
        if target and counts[gid] < dg.groups[gid].size - 1:
            counts[gid] += 1
            target -= 1
    assert {gid: len(u) for gid, u in plan.removed.items()} == {
        k: v for k, v in counts.items() if v
    }


def test_plan_restricted_to_one_group(tmp_path):
    m = load(tmp_path)
    dg = spa_nm.analyze(m)
    gids = [g.id for g in dg.prunable_groups]
    plan = make_plan(dg, PruneConfig(0.5, "l2", round_to=1, groups=(gids[1],)))
    assert list(plan.removed) == [gids[1]]
    res = spa_nm.prune(m, 0.5, round_to=1, groups=[gids[0]])
    assert list(res.plan.removed) == [gids[0]]
    blocked = next(g.id for g in dg.groups if not g.prunable)
    with pytest.raises(ConfigError, match="not prunable"):
        make_plan(dg, PruneConfig(0.5, groups=(blocked,)))
    with pytest.raises(ConfigError, match="no channel group"):
        make_plan(dg, PruneConfig(0.5, groups=(999,)))


def test_every_criterion_prunes_and_stays_exact_where_it_should(tmp_path):
    from spa_nm.testing import assert_prune_equivalent

    m = load(tmp_path, **chain_weights(seed=1))
    for crit in sorted(CRITERIA):
        res = spa_nm.prune(m, 0.5, crit, round_to=1)
        assert res.report["channels_removed"] > 0, crit
        if crit != "obspa":  # obspa compensates kept weights: tests/test_obspa.py
            assert_prune_equivalent(m, res)


def test_unknown_criterion_and_aggregation(tmp_path):
    dg = spa_nm.analyze(load(tmp_path))
    g = dg.prunable_groups[0]
    with pytest.raises(ConfigError, match="unknown criterion"):
        score_group(dg, g, "nope")
    with pytest.raises(ConfigError, match="unknown aggregation"):
        score_group(dg, g, "fpgm", agg="median")
