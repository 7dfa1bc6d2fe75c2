"""Ratio overrides, iterative pruning in K rounds, re-initialisation, the three regimes and the
scratch baselines (METHODS.md §1.6, §1.8, §4.1; `spa_nm.plan`, `spa_nm.iterative`,
`spa_nm.regimes`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.cli import main
from spa_nm.errors import ConfigError
from spa_nm.facts import Slot
from spa_nm.io import to_proto_with_data
from spa_nm.iterative import cumulative_ratios
from spa_nm.plan import PruneConfig, make_plan
from spa_nm.regimes import scratch_epochs
from spa_nm.testing import assert_prune_equivalent, random_feeds, run
from tests.helpers import CNN, model_from_text

ROOT = Path(__file__).resolve().parents[1]

# three hidden groups h1, h2, h3 (32 units each); unnamed nodes are labelled op_index:
# Gemm_0 writes h1, Gemm_2 reads h1 and writes h2, Gemm_4 reads h2 and writes h3, Gemm_6 reads h3
DEEP = """
<ir_version: 8, opset_import: ["" : 13]>
deep (float[N, 8] x) => (float[N, 4] logits)
<float[32, 8] w1, float[32] b1, float[32, 32] w2, float[32] b2, float[32, 32] w3, float[32] b3,
 float[4, 32] w4, float[4] b4>
{
  h1 = Gemm <transB = 1> (x, w1, b1)
  r1 = Relu (h1)
  h2 = Gemm <transB = 1> (r1, w2, b2)
  r2 = Relu (h2)
  h3 = Gemm <transB = 1> (r2, w3, b3)
  r3 = Relu (h3)
  logits = Gemm <transB = 1> (r3, w4, b4)
}
"""


def load(tmp_path, text=DEEP, name="m.onnx", seed=0, **weights):
    p = tmp_path / name
    onnx.save(model_from_text(text, seed=seed, **weights), p)
    return spa_nm.load(p)


def gid(dg, value):
    return dg.group_of(Slot(value, (1,))).id


def blobs(n: int = 240, seed: int = 0, d: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.standard_normal((4, d))[labels] * 2 + rng.standard_normal((n, d))
    return {"x": x.astype(np.float32), "labels": labels.astype(np.int64)}


# -- ratio overrides ------------------------------------------------------------------------


def test_override_changes_exactly_the_targeted_groups(tmp_path):
    m = load(tmp_path)
    dg = spa_nm.analyze(m)
    g1, g2, g3 = gid(dg, "h1"), gid(dg, "h2"), gid(dg, "h3")
    base = make_plan(dg, PruneConfig(0.5, round_to=1))
    # Gemm_6 reads h3 only: only h3's group changes
    plan = make_plan(dg, PruneConfig(0.5, round_to=1, ratio_for=(("Gemm_6", 0.25),)))
    for g in (g1, g2):
        np.testing.assert_array_equal(plan.removed[g], base.removed[g])
    assert base.removed[g3].size == 16 and plan.removed[g3].size == 8
    # the 8 removed are the 8 lowest of the same scores: a subset of the 16
    assert set(plan.removed[g3]) <= set(base.removed[g3])
    # Gemm_2 touches h1 (reads it) and h2 (writes it)
    plan = make_plan(dg, PruneConfig(0.5, round_to=1, ratio_for=(("Gemm_2", 0.125),)))
    assert [plan.removed[g].size for g in (g1, g2, g3)] == [4, 4, 16]


def test_override_precedence(tmp_path):
    m = load(tmp_path)
    dg = spa_nm.analyze(m)
    g1, g2, g3 = gid(dg, "h1"), gid(dg, "h2"), gid(dg, "h3")

    def sizes(**kw):
        plan = make_plan(dg, PruneConfig(kw.pop("ratio", 0.5), round_to=1, **kw))
        return [plan.removed.get(g, np.zeros(0)).size for g in (g1, g2, g3)]

    # the last matching pair wins
    assert sizes(ratio_for=(("Gemm_*", 0.25), ("Gemm_6", 0.75))) == [8, 8, 24]
    assert sizes(ratio_for=(("Gemm_6", 0.75), ("Gemm_*", 0.25))) == [8, 8, 8]
    # base ratio 0: only overridden groups are pruned; an override of 0 protects
    assert sizes(ratio=0.0, ratio_for=(("Gemm_6", 0.5),)) == [0, 0, 16]
    assert sizes(ratio_for=(("Gemm_6", 0.0),)) == [16, 16, 0]
    # ignore beats every override
    dgi = spa_nm.analyze(m, ignore=["Gemm_6"])
    plan = make_plan(dgi, PruneConfig(0.5, round_to=1, ratio_for=(("Gemm_6", 0.75),)))
    assert gid(dgi, "h3") not in plan.removed
    # global ranking: the overridden group is local at its ratio, the rest global at 0.5
    plan = make_plan(dg, PruneConfig(0.5, round_to=1, global_ranking=True, ratio_for=(("Gemm_6", 0.25),)))  # fmt: skip
    assert plan.removed[g3].size == 8
    assert plan.removed.get(g1, np.zeros(0)).size + plan.removed.get(g2, np.zeros(0)).size == 32


def test_override_through_api_and_cli(tmp_path):
    m = load(tmp_path)
    res = spa_nm.prune(m, 0.5, round_to=1, ratio_for=[("Gemm_6", 0.25)])
    assert res.report["channels_removed"] == 16 + 16 + 8
    assert res.report["ratio_for"] == [
        {"pattern": "Gemm_6", "ratio": 0.25, "groups": [gid(res.graph, "h3")]}
    ]
    assert_prune_equivalent(m, res)
    src = tmp_path / "m.onnx"
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    args = ["prune", str(src), "-o", str(out), "--ratio", "0.5", "--round-to", "1", "-q"]
    assert main([*args, "--ratio-for", "Gemm_6=0.25", "--ratio-for", "Gemm_2=0", "--report", str(rep)]) == 0  # fmt: skip
    entry = json.loads(rep.read_text())["models"][0]
    assert entry["channels_removed"] == 8  # h1, h2 touch Gemm_2 (ratio 0); h3 touches Gemm_6
    assert [r["pattern"] for r in entry["ratio_for"]] == ["Gemm_6", "Gemm_2"]
    for bad in ("Gemm_6", "Gemm_6=1.5", "=0.5"):
        with pytest.raises(SystemExit) as e:
            main([*args, "--ratio-for", bad])
        assert e.value.code == 2
    with pytest.raises(ConfigError, match="ratio for 'x'"):
        PruneConfig(0.5, ratio_for=(("x", 1.0),))


# -- iterative pruning ----------------------------------------------------------------------


def test_cumulative_ratios():
    assert cumulative_ratios(0.5, 1) == [0.5]
    geo = cumulative_ratios(0.875, 3)
    np.testing.assert_allclose(geo, [0.5, 0.75, 0.875])
    np.testing.assert_allclose(cumulative_ratios(0.6, 4, "linear"), [0.15, 0.3, 0.45, 0.6])
    with pytest.raises(ConfigError, match="schedule"):
        cumulative_ratios(0.5, 2, "cosine")
    with pytest.raises(ConfigError, match="steps"):
        cumulative_ratios(0.5, 0)


def _sizes(model) -> list[int]:
    return sorted(g.size for g in spa_nm.analyze(model).groups)


@pytest.mark.parametrize("schedule", ["geometric", "linear"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_k_steps_reach_the_one_shot_counts(schedule, round_to):
    m = spa_nm.load(ROOT / "models" / "onnx" / "resnet_basic.onnx")
    one = spa_nm.prune(m, 0.5, round_to=round_to)
    it = spa_nm.prune(m, 0.5, steps=3, schedule=schedule, round_to=round_to)
    rep = it.report
    assert len(rep["steps"]) == 3
    assert [s["ratio"] for s in rep["steps"]] == cumulative_ratios(0.5, 3, schedule)
    assert rep["channels_removed"] == one.report["channels_removed"]
    assert sum(s["channels_removed"] for s in rep["steps"]) == rep["channels_removed"]
    if round_to == 1:  # every round removes something
        assert all(s["channels_removed"] > 0 for s in rep["steps"])
    assert _sizes(it.model) == _sizes(one.model)
    assert rep["params_after"] == one.report["params_after"]
    assert rep["params_before"] == one.report["params_before"]
    onnx.checker.check_model(to_proto_with_data(it.model), full_check=True)
    run(it.model, random_feeds(it.model))


def test_k_steps_global_reaches_the_total(tmp_path):
    m = load(tmp_path)
    one = spa_nm.prune(m, 0.5, global_ranking=True, round_to=1)
    it = spa_nm.prune(m, 0.5, global_ranking=True, round_to=1, steps=4)
    assert it.report["channels_removed"] == one.report["channels_removed"] == 48
    assert it.report["channel_ratio"] == 0.5


def test_one_step_is_one_shot(tmp_path):
    from spa_nm.iterative import prune_iterative

    resnet = spa_nm.load(ROOT / "models" / "onnx" / "resnet_basic.onnx")
    for m, crit in ((resnet, "l2"), (resnet, "random"), (load(tmp_path), "obspa")):
        one = spa_nm.prune(m, 0.4, crit, round_to=1)
        it = prune_iterative(m, 0.4, crit, steps=1, round_to=1)
        a, b = to_proto_with_data(one.model), to_proto_with_data(it.model)
        assert a.graph.node == b.graph.node, crit
        for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))  # fmt: skip


def test_k_steps_rescore_each_round(tmp_path):
    """Rescoring: the second round scores the pruned model, so with obspa (compensating) the
    result differs from one-shot; both reach the same counts and stay valid."""
    m = load(tmp_path)
    one = spa_nm.prune(m, 0.5, "obspa", round_to=1)
    it = spa_nm.prune(m, 0.5, "obspa", round_to=1, steps=2)
    assert it.report["channels_removed"] == one.report["channels_removed"]
    feeds = random_feeds(m)
    assert not np.allclose(run(one.model, feeds)[0], run(it.model, feeds)[0])
    onnx.checker.check_model(to_proto_with_data(it.model), full_check=True)


def test_k_steps_with_finetuning(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from spa_nm.regimes import reinitialize

    m, _ = reinitialize(load(tmp_path), seed=0)
    data = blobs()
    res = spa_nm.prune(m, 0.5, round_to=1, steps=2, finetune_epochs=3, data=data,
                       finetune={"lr": 0.01, "batch_size": 32})  # fmt: skip
    steps = res.report["steps"]
    assert [s["finetune"]["epochs"] for s in steps] == [3, 3]
    assert steps[1]["finetune"]["val"]["after"]["accuracy"] > 0.5  # four separable blobs
    plain = spa_nm.prune(m, 0.5, round_to=1, steps=2)
    assert _sizes(res.model) == _sizes(plain.model)
    assert res.report["channels_removed"] == plain.report["channels_removed"] == 48
    with pytest.raises(ConfigError, match="needs data"):
        spa_nm.prune(m, 0.5, steps=2, finetune_epochs=1)
    with pytest.raises(ConfigError, match="group ids change"):
        spa_nm.prune(m, 0.5, steps=2, groups=[0])


# -- re-initialisation ----------------------------------------------------------------------


def test_reinitialize_draws_torch_like_defaults(tmp_path):
    from spa_nm.regimes import reinitialize

    m = load(tmp_path, CNN, "cnn.onnx")
    before = {k: v.const_value.numpy().copy() for k, v in m.graph.initializers.items()}
    new, rep = reinitialize(m, seed=3)
    assert rep["kept"] == []
    w = {k: v.const_value.numpy() for k, v in new.graph.initializers.items()}
    for name, fan_in in (("w1", 27), ("w2", 72), ("wf", 48)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(w[name]).max() <= bound
        assert np.abs(w[name]).max() > 0.9 * bound
        assert w[name].dtype == np.float32
    assert abs(np.std(w["w2"]) - 1 / np.sqrt(72) / np.sqrt(3)) < 0.01  # U(-b, b): std b/√3
    for name in ("b1", "b2", "bf", "shift", "mean"):
        assert np.all(w[name] == 0), name
    for name in ("scale", "var"):
        assert np.all(w[name] == 1), name
    np.testing.assert_array_equal(w["shp"], before["shp"])  # int64 shape: untouched
    for k, v in m.graph.initializers.items():  # the input is not modified
        np.testing.assert_array_equal(v.const_value.numpy(), before[k])
    again, _ = reinitialize(m, seed=3)
    other, _ = reinitialize(m, seed=4)
    np.testing.assert_array_equal(again.graph.initializers["w2"].const_value.numpy(), w["w2"])
    assert not np.array_equal(other.graph.initializers["w2"].const_value.numpy(), w["w2"])
    onnx.checker.check_model(to_proto_with_data(new), full_check=True)
    assert np.all(np.isfinite(run(new, random_feeds(new))[0]))


def test_scratch_epochs():
    assert scratch_epochs(10, 400, 100) == 20  # capped at 2x
    assert scratch_epochs(10, 300, 200) == 15
    assert scratch_epochs(10, 300, 200, cap=1.2) == 12
    assert scratch_epochs(10, 100, 100) == 10


# -- the regimes --------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path):
    """The DEEP MLP trained a few epochs on four blobs, and the data."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from spa_nm.regimes import reinitialize
    from spa_nm.train.finetune import finetune

    init, _ = reinitialize(load(tmp_path), seed=0)
    data = blobs()
    model, _ = finetune(init, data, method="dense", epochs=4, lr=0.01, batch_size=32, seed=0)
    return init, model, data


def test_regimes_end_to_end(trained):
    from spa_nm.regimes import evaluate_accuracy, run_regime
    from spa_nm.train.data import make_dataset, split

    init, model, data = trained
    kw = {"ratio": 0.5, "train": {"lr": 0.01, "batch_size": 32}, "prune": {"round_to": 1}}
    out = {}
    out["prune-train"] = run_regime("prune-train", init, data, criterion="snip", epochs=4, **kw)
    out["train-prune-finetune"] = run_regime("train-prune-finetune", model, data, criterion="taylor", epochs=2, **kw)  # fmt: skip
    out["train-prune"] = run_regime("train-prune", model, data, criterion="obspa", **kw)
    out["scratch-e"] = run_regime("scratch-e", model, data, criterion="l2", epochs=4, **kw)
    out["scratch-b"] = run_regime("scratch-b", model, data, criterion="l2", epochs=4, **kw)
    _, val = split(make_dataset(model, data, "<data>"), 0.2, 0)
    params = set()
    for name, (new, rep) in out.items():
        assert rep["regime"] == name
        # the reported accuracy is the returned model's, measured independently
        assert rep["val_accuracy"] == evaluate_accuracy(new, val)["accuracy"]
        assert rep["val_samples"] == len(val)
        params.add(rep["params"])
        assert rep["prune"]["channels_removed"] == 48
    assert len(params) == 1  # one architecture (local ranking, same ratio)
    assert "training" not in out["train-prune"][1]
    assert out["train-prune"][1]["val_accuracy"] == out["train-prune"][1]["val_pruned"]["accuracy"]
    assert out["train-prune-finetune"][1]["training"]["epochs"] == 2
    assert (
        out["train-prune-finetune"][1]["prune"]["taylor"]["loss"] == "cross-entropy on the labels"
    )
    sb = out["scratch-b"][1]
    assert sb["scratch_b"]["epochs"] == scratch_epochs(4, sb["macs_dense_per_sample"], sb["macs_per_sample"])  # fmt: skip
    assert sb["training"]["epochs"] == sb["scratch_b"]["epochs"] > 4
    assert out["scratch-e"][1]["training"]["epochs"] == 4
    # scratch starts from fresh weights: its pruned, untrained accuracy is about chance
    assert out["scratch-e"][1]["val_pruned"]["accuracy"] < out["train-prune"][1]["val_pruned"]["accuracy"]  # fmt: skip
    for _, rep in out.values():
        assert rep["val_accuracy"] > 0.5  # four separable blobs; chance is 0.25


def test_regime_errors(trained):
    from spa_nm.regimes import run_regime

    init, model, data = trained
    with pytest.raises(ConfigError, match="does not fine-tune"):
        run_regime("train-prune", model, data, ratio=0.5, criterion="obspa", epochs=1)
    with pytest.raises(ConfigError, match="give epochs"):
        run_regime("scratch-e", model, data, ratio=0.5, criterion="l2")
    with pytest.raises(ConfigError, match="needs labels"):
        run_regime("prune-train", init, {"x": data["x"]}, ratio=0.5, criterion="l2", epochs=1)
    with pytest.raises(ConfigError, match="unknown regime"):
        run_regime("train-forever", init, data, ratio=0.5, criterion="l2", epochs=1)


def test_regime_cli(trained, tmp_path):
    _, model, data = trained
    src, d = tmp_path / "trained.onnx", tmp_path / "d.npz"
    spa_nm.save(model, src)
    np.savez(d, x_train=data["x"][:200], y_train=data["labels"][:200],
             x_val=data["x"][200:], y_val=data["labels"][200:])  # fmt: skip
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    args = ["regime", "scratch-b", str(src), "--data", str(d), "-o", str(out), "--ratio", "0.5",
            "--epochs", "2", "--round-to", "1", "--lr", "0.01", "--threads", "1", "--report", str(rep), "-q"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(rep.read_text())
    assert r["val_samples"] == 40  # the §7 layout's own validation arrays
    assert r["training"]["epochs"] == r["scratch_b"]["epochs"]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    bad = ["regime", "train-prune", str(src), "--data", str(d), "-o", str(out), "--ratio", "0.5"]
    assert main([*bad, "--epochs", "1"]) == 2
    assert main(["regime", "scratch-e", str(tmp_path / "no.onnx"), "--data", str(d), "-o", str(out), "--ratio", "0.5", "--epochs", "1"]) == 2  # fmt: skip


def test_steps_through_the_cli(tmp_path):
    pytest.importorskip("torch")
    src = tmp_path / "m.onnx"
    onnx.save(model_from_text(DEEP), src)
    d = tmp_path / "d.npz"
    np.savez(d, **blobs())
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    base = ["prune", str(src), "-o", str(out), "--ratio", "0.5", "--round-to", "1", "-q"]
    assert main([*base, "--steps", "3", "--schedule", "linear", "--report", str(rep)]) == 0
    entry = json.loads(rep.read_text())["models"][0]
    assert [s["ratio"] for s in entry["steps"]] == cumulative_ratios(0.5, 3, "linear")
    assert entry["channels_removed"] == 48 and entry["channel_ratio"] == 0.5
    onnx.checker.check_model(onnx.load(out), full_check=True)
    ft = ["--steps", "2", "--data", str(d), "--finetune-epochs", "1", "--report", str(rep)]
    assert main([*base, *ft]) == 0
    entry = json.loads(rep.read_text())["models"][0]
    assert [s["finetune"]["epochs"] for s in entry["steps"]] == [1, 1]
    assert main([*base, "--steps", "2", "--finetune-epochs", "1"]) == 2  # needs --data
