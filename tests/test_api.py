"""API-level behaviour of prune: identity at ratio 0, allocation, rounding, ignore, criteria."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from tests.helpers import CNN, model_from_text

import onnx_ir as ir
import spa_nm
from spa_nm.errors import ConfigError
from spa_nm.testing import assert_prune_equivalent

RESIDUAL = """
<ir_version: 8, opset_import: ["" : 13]>
res (float[1, 4, 8, 8] input) => (float[1, 6] output)
<float[16, 4, 3, 3] w0, float[16] b0, float[16, 16, 3, 3] w1, float[16] b1, float[16, 16, 1, 1] w2,
 float[16] b2, float[32, 16, 1, 1] w3, float[32] b3, float[6, 32] wf, float[6] bf>
{
  a = Conv <pads = [1, 1, 1, 1]> (input, w0, b0)
  ra = Relu (a)
  c = Conv <pads = [1, 1, 1, 1]> (ra, w1, b1)
  rc = Relu (c)
  d = Conv (rc, w2, b2)
  s = Add (d, ra)
  rs = Relu (s)
  e = Conv (rs, w3, b3)
  re = Relu (e)
  g = GlobalAveragePool (re)
  f = Flatten (g)
  output = Gemm <transB = 1> (f, wf, bf)
}
"""


def load_text(tmp_path, text, name="m.onnx", **weights):
    p = tmp_path / name
    onnx.save(model_from_text(text, **weights), p)
    return spa_nm.load(p)


def channels(model: ir.Model, name: str) -> int:
    return int(model.graph.initializers[name].const_value.shape[0])


def test_ratio_zero_returns_the_model_unchanged(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    res = spa_nm.prune(m, 0.0)
    a = ir.serde.serialize_model(m)
    b = ir.serde.serialize_model(res.model)
    assert a.SerializeToString() == b.SerializeToString()
    assert res.report["channels_removed"] == 0
    assert res.report["params_after"] == res.report["params_before"]


def test_prune_does_not_modify_its_input(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    before = ir.serde.serialize_model(m).SerializeToString()
    spa_nm.prune(m, 0.5)
    assert ir.serde.serialize_model(m).SerializeToString() == before


def test_residual_group_is_pruned_together_and_exactly(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    res = spa_nm.prune(m, 0.5)
    out = res.model
    # w0 and w2 produce the two operands of the residual add: same surviving count
    assert channels(out, "w0") == channels(out, "w2") == 8
    assert channels(out, "w1") == 8 and channels(out, "w3") == 16
    assert res.report["macs_after"] < res.report["macs_before"]
    assert_prune_equivalent(m, res)


def test_local_ratio_removes_floor_of_each_group(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    res = spa_nm.prune(m, 0.3, round_to=1)
    # 16 -> 16 - floor(4.8) = 12; 32 -> 32 - floor(9.6) = 23
    assert channels(res.model, "w0") == 12 and channels(res.model, "w3") == 23
    assert_prune_equivalent(m, res)


def test_default_round_to_is_eight(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    res = spa_nm.prune(m, 0.3)
    assert channels(res.model, "w3") == 24  # 32 - floor(9.6) = 23 survivors, rounded up to 24
    assert channels(res.model, "w0") == 16  # 12 survivors round up to 16: the group stays whole
    assert_prune_equivalent(m, res)


@pytest.mark.parametrize("k", [4, 8])
def test_round_to_keeps_multiples(tmp_path, k):
    m = load_text(tmp_path, RESIDUAL)
    res = spa_nm.prune(m, 0.3, round_to=k)
    for w in ("w0", "w1", "w3"):
        assert channels(res.model, w) % k == 0
    assert_prune_equivalent(m, res)


def test_global_ranking_hits_the_total_ratio(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    dg = spa_nm.analyze(m)
    total = sum(g.size for g in dg.prunable_groups)
    res = spa_nm.prune(m, 0.5, global_ranking=True, round_to=1)
    assert res.report["channels_removed"] == total // 2
    assert_prune_equivalent(m, res)


def test_global_ranking_removes_the_weak_layer_first(tmp_path):
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 16, 3, 3)) * 1e-3).astype(np.float32)  # a nearly dead layer
    m = load_text(tmp_path, RESIDUAL, w1=w1)
    res = spa_nm.prune(m, 0.2, global_ranking=True, round_to=1)
    # scores are normalized per group, so the allocation is not simply "all of w1"
    assert res.report["channels_removed"] == (16 + 16 + 32) // 5
    assert_prune_equivalent(m, res)


def test_ignore_pattern_freezes_groups(tmp_path):
    m = load_text(tmp_path, CNN)
    dg = spa_nm.analyze(m, ignore=["Conv_0"])
    names = {n for g in dg.groups if g.prunable for n in g.nodes}
    assert "Conv_0" not in names
    res = spa_nm.prune(m, 0.5, ignore=["Conv_0"], round_to=1)
    assert channels(res.model, "w1") == 8  # untouched
    assert channels(res.model, "w2") == 6  # the other group still pruned
    assert_prune_equivalent(m, res)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
def test_zero_channel_goes_first(tmp_path, criterion):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) + 1.0
    w1[5] = 0.0
    scale = np.ones(8, np.float32) + rng.random(8).astype(np.float32)
    scale[5] = 0.0
    w2 = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    w2[:, 5] = 0.0  # the whole group vector of channel 5 is zero (bn reads the scale alone)
    m = load_text(tmp_path, CNN, w1=w1, scale=scale, w2=w2)
    res = spa_nm.prune(m, 1 / 8 + 1e-9, criterion=criterion, round_to=1)  # remove one of 8
    kept_w1 = res.model.graph.initializers["w1"].const_value.numpy()
    assert kept_w1.shape[0] == 7
    assert not np.any(np.all(kept_w1 == 0, axis=(1, 2, 3))), "the zero channel survived"
    assert_prune_equivalent(m, res)


def test_random_criterion_is_seeded(tmp_path):
    m = load_text(tmp_path, RESIDUAL)
    a = spa_nm.prune(m, 0.5, criterion="random", seed=3).model
    b = spa_nm.prune(m, 0.5, criterion="random", seed=3).model
    c = spa_nm.prune(m, 0.5, criterion="random", seed=4).model
    wa, wb, wc = (x.graph.initializers["w1"].const_value.numpy() for x in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan")])
def test_bad_ratio(tmp_path, ratio):
    m = load_text(tmp_path, CNN)
    with pytest.raises(ConfigError):
        spa_nm.prune(m, ratio)


def test_unknown_criterion(tmp_path):
    m = load_text(tmp_path, CNN)
    with pytest.raises(ConfigError, match="unknown criterion"):
        spa_nm.prune(m, 0.5, criterion="nope")


def test_save_and_reload_keeps_opset_ir_and_metadata(tmp_path):
    proto = model_from_text(RESIDUAL)
    onnx.helper.set_model_props(proto, {"author": "me"})
    proto.producer_name = "unit-test"
    p = tmp_path / "m.onnx"
    onnx.save(proto, p)
    res = spa_nm.prune(spa_nm.load(p), 0.5)
    out = tmp_path / "o.onnx"
    spa_nm.save(res.model, out)
    q = onnx.load(out)
    assert q.ir_version == proto.ir_version
    assert [(o.domain, o.version) for o in q.opset_import] == [
        (o.domain, o.version) for o in proto.opset_import
    ]
    assert {p.key: p.value for p in q.metadata_props} == {"author": "me"}
    assert q.producer_name == "unit-test"
    assert [i.name for i in q.graph.input] == ["input"] and [o.name for o in q.graph.output] == [
        "output"
    ]
    onnx.checker.check_model(q, full_check=True)


def test_save_refuses_to_overwrite_an_input(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(model_from_text(CNN), p)
    m = spa_nm.load(p)
    with pytest.raises(spa_nm.InputError):
        spa_nm.save(m, p, inputs=[p])


def test_external_data_round_trip(tmp_path):
    """A model with external data is written back with external data, and prunes exactly."""
    proto = model_from_text(RESIDUAL)
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(proto, src, save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = spa_nm.load(src)
    res = spa_nm.prune(m, 0.5)
    assert_prune_equivalent(m, res)
    out = tmp_path / "out" / "m.onnx"
    spa_nm.save(res.model, out)
    assert (tmp_path / "out" / "m.onnx.data").exists()
    q = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in q.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)
    back = spa_nm.load(out)
    from spa_nm.testing import random_feeds, run

    feeds = random_feeds(back)
    for a, b in zip(run(res.model, feeds), run(back, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    # forcing a single file works too
    single = tmp_path / "single.onnx"
    spa_nm.save(back, single, external_data=False)
    assert not (tmp_path / "single.onnx.data").exists()


def test_save_refuses_to_overwrite_the_input_weights(tmp_path):
    proto = model_from_text(RESIDUAL)
    src = tmp_path / "a.onnx"
    onnx.save(proto, src, save_as_external_data=True, location="b.onnx.data", size_threshold=0)
    m = spa_nm.load(src)
    with pytest.raises(spa_nm.InputError, match="holds the input's weights"):
        spa_nm.save(spa_nm.prune(m, 0.5).model, tmp_path / "b.onnx")


def test_negative_declared_dims_count_as_unknown(tmp_path):
    """paddle2onnx declares "any" as dim -1: MACs are counted at batch 1, never negative."""
    proto = model_from_text(CNN.replace("[1, 48]", "[-1, 48]").replace("{1, 48}", "{-1, 48}"))
    onnx.save(proto, tmp_path / "ref.onnx")
    ref = spa_nm.prune(spa_nm.load(tmp_path / "ref.onnx"), ratio=0.5).report
    for v in (*proto.graph.input, *proto.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = -1
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("c2", onnx.TensorProto.FLOAT, [-1, 12, 4, 4]))
    p = tmp_path / "neg.onnx"
    onnx.save(proto, p)
    res = spa_nm.prune(spa_nm.load(p), ratio=0.5)
    assert res.report["macs_before"] == ref["macs_before"] > 0
    assert 0 < res.report["macs_after"] == ref["macs_after"] < ref["macs_before"]
    assert_prune_equivalent(spa_nm.load(p), res, atol=1e-5)
