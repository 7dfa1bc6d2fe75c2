"""Data-driven criteria taylor / hessian / snip (METHODS.md §1.5, `spa_nm.datadriven`): known
answers on hand-built graphs, a finite-difference oracle for Taylor, an independent torch
autograd oracle for the formulas, the §1.5 substitute, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.cli import main
from spa_nm.errors import ConfigError, InputError
from spa_nm.facts import Slot
from spa_nm.importance import make_scorer
from spa_nm.testing import assert_prune_equivalent
from tests.helpers import CNN, model_from_text

torch = pytest.importorskip("torch")
from spa_nm.datadriven import GRADIENT_CRITERIA, SUBSTITUTE, GradientOptions  # noqa: E402

MLP = """
<ir_version: 8, opset_import: ["" : 13]>
mlp (float[N, 8] x) => (float[N, 4] logits)
<float[16, 8] w1, float[16] b1, float[4, 16] w2, float[4] b2>
{
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu (h)
  logits = Gemm <transB = 1> (r, w2, b2)
}
"""


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mlp_weights(seed: int = 0, dead: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.standard_normal((16, 8)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((4, 16)).astype(np.float32) * 0.5,
        "b2": rng.standard_normal(4).astype(np.float32) * 0.1,
    }
    if dead is not None:  # nothing reads this hidden unit: it cannot change the loss
        w["w2"][:, dead] = 0
    return w


def load(tmp_path, text=MLP, name="m.onnx", **weights):
    p = tmp_path / name
    onnx.save(model_from_text(text, **weights), p)
    return spa_nm.load(p)


def blobs(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.standard_normal((4, 8))[labels] * 2 + rng.standard_normal((n, 8))
    return {"x": x.astype(np.float32), "labels": labels.astype(np.int64)}


def hidden_group(dg):
    g = dg.group_of(Slot("h", (1,)))
    return g, np.searchsorted(g.units, dg.elements(Slot("h", (1,))))


def scores(m, criterion, opts=None, agg="sum"):
    dg = spa_nm.analyze(m)
    g, pos = hidden_group(dg)
    s, note = make_scorer(dg, criterion, agg, None, opts)(g)
    return s[pos], note


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("criterion", GRADIENT_CRITERIA)
def test_unit_nothing_reads_scores_zero_and_ranks_last(tmp_path, criterion, labelled):
    m = load(tmp_path, **mlp_weights(dead=5))
    data = blobs()
    if not labelled:
        del data["labels"]
    s, note = scores(m, criterion, GradientOptions(data, batch_size=16, batches=3))
    assert note is None
    assert s[5] == 0.0
    assert np.all(np.delete(s, 5) > 0)
    # and the plan removes it first
    res = spa_nm.prune(m, 1 / 16, criterion, round_to=1, data=data)
    (removed,) = res.plan.removed.values()
    g, pos = hidden_group(res.graph)
    assert removed.tolist() == [g.units[pos[5]]]


def _loss(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the MLP in float64 (the numpy reference)."""
    h = np.maximum(x @ w["w1"].T + w["b1"], 0)
    z = h @ w["w2"].T + w["b2"]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(y)), y]))


def test_taylor_equals_finite_difference_loss_change(tmp_path):
    """One batch: taylor(c) = (Σ_{θ∈S(c)} θ·g)² and Σθ·g = −d/dh L(θ − h·θ_S(c)) at h = 0."""
    w = mlp_weights(seed=3)
    m = load(tmp_path, **w)
    data = blobs(40, seed=1)
    s, _ = scores(m, "taylor", GradientOptions(data, batch_size=40, batches=1))
    x, y = data["x"].astype(np.float64), data["labels"]
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    eps = 1e-4
    for c in range(16):

        def moved(h, c=c):
            v = {k: a.copy() for k, a in w64.items()}
            v["w1"][c] *= 1 - h
            v["b1"][c] *= 1 - h
            v["w2"][:, c] *= 1 - h
            return v

        fd = (_loss(moved(eps), x, y) - _loss(moved(-eps), x, y)) / (2 * eps)
        assert np.sqrt(s[c]) == pytest.approx(abs(fd), rel=2e-3, abs=1e-7), c


def _torch_grads(w, x, y):
    """Gradients of the mean cross-entropy by plain torch modules (independent of the bridge)."""
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in w.items()}
    h = torch.relu(torch.tensor(x, dtype=torch.float64) @ t["w1"].T + t["b1"])
    z = h @ t["w2"].T + t["b2"]
    loss = torch.nn.functional.cross_entropy(z, torch.tensor(y))
    loss.backward()
    return {k: v.grad.numpy() for k, v in t.items()}


def test_hessian_and_snip_formulas_match_torch_autograd(tmp_path):
    w = mlp_weights(seed=4)
    m = load(tmp_path, **w)
    data = blobs(32, seed=2)
    g = _torch_grads(w, data["x"], data["labels"])
    theta = {k: v.astype(np.float64) for k, v in w.items()}
    # S(c) = w1 row c, b1[c], w2 column c (b2 belongs to no hidden unit)
    snip = (
        np.abs(theta["w1"] * g["w1"]).sum(1)
        + np.abs(theta["b1"] * g["b1"])
        + np.abs(theta["w2"] * g["w2"]).sum(0)
    )
    fisher = (
        (theta["w1"] ** 2 * g["w1"] ** 2).sum(1)
        + theta["b1"] ** 2 * g["b1"] ** 2
        + (theta["w2"] ** 2 * g["w2"] ** 2).sum(0)
    ) / 2
    taylor = (
        (theta["w1"] * g["w1"]).sum(1) + theta["b1"] * g["b1"] + (theta["w2"] * g["w2"]).sum(0)
    ) ** 2
    opts = GradientOptions(data, batch_size=32, batches=1)
    for crit, want in (("snip", snip), ("hessian", fisher), ("taylor", taylor)):
        got, _ = scores(m, crit, opts)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-12, err_msg=crit)
    # aggregation max: the largest per-slice score (snip: w1 row, b1, w2 column)
    got, _ = scores(m, "snip", opts, agg="max")
    per = np.stack(
        [
            np.abs(theta["w1"] * g["w1"]).sum(1),
            np.abs(theta["b1"] * g["b1"]),
            np.abs(theta["w2"] * g["w2"]).sum(0),
        ]
    )
    np.testing.assert_allclose(got, per.max(0), rtol=1e-4, atol=1e-12)


def test_batch_statistics(tmp_path):
    """snip uses the mean gradient: two equal halves give the full batch's score; taylor
    averages squares: it can only grow when the batch is split (Jensen)."""
    m = load(tmp_path, **mlp_weights(seed=5))
    data = blobs(48, seed=3)
    one = GradientOptions(data, batch_size=48, batches=1)
    two = GradientOptions(data, batch_size=24, batches=2)
    np.testing.assert_allclose(scores(m, "snip", two)[0], scores(m, "snip", one)[0], rtol=1e-4)
    t1, t2 = scores(m, "taylor", one)[0], scores(m, "taylor", two)[0]
    assert np.all(t2 >= t1 * (1 - 1e-4))
    assert np.any(t2 > t1 * 1.01)


@pytest.mark.parametrize("criterion", GRADIENT_CRITERIA)
def test_conv_bn_graph_prunes_exactly(tmp_path, criterion, cnn_path):
    """On a Conv-BN-Relu-Conv-MaxPool-Reshape-Gemm graph: a unit nothing reads ranks last in
    its group, and the pruned model equals the zeroed original (the oracle of §1.4)."""
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    w2[:, 2] = 0
    m = load(tmp_path, CNN, "cnn.onnx", w2=w2)
    dg = spa_nm.analyze(m)
    g = dg.group_of(Slot("c1", (1,)))
    pos = np.searchsorted(g.units, dg.elements(Slot("c1", (1,))))
    s, _ = make_scorer(dg, criterion)(g)
    assert s[pos[2]] == 0 and np.all(np.delete(s, pos[2]) > 0)
    res = spa_nm.prune(m, 0.5, criterion, round_to=1)  # static batch 1: batches of 1
    assert res.report["channels_removed"] > 0
    assert res.report[criterion]["batches"] == 8
    assert_prune_equivalent(m, res)


def test_substitute_is_named(tmp_path):
    m = load(tmp_path, **mlp_weights())
    res = spa_nm.prune(m, 0.5, "taylor", round_to=1)
    assert res.report["taylor"]["loss"] == SUBSTITUTE
    assert "random inputs" in res.report["taylor"]["data"]
    data = blobs()
    res = spa_nm.prune(m, 0.5, "hessian", round_to=1, data={"x": data["x"]})
    assert res.report["hessian"]["loss"] == SUBSTITUTE
    res = spa_nm.prune(m, 0.5, "snip", round_to=1, data=data)
    assert res.report["snip"]["loss"] == "cross-entropy on the labels"
    assert res.report["snip"]["samples"] == 64  # 2 batches of 32 (all the data)


def test_bad_inputs(tmp_path):
    m = load(tmp_path, **mlp_weights())
    data = blobs()
    with pytest.raises(InputError, match="labels need"):
        spa_nm.prune(m, 0.5, "taylor", data={"x": data["x"], "labels": data["labels"] + 10})
    with pytest.raises(InputError, match="no such file"):
        spa_nm.prune(m, 0.5, "taylor", data=tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="data applies"):
        spa_nm.prune(m, 0.5, "l2", data=data)
    with pytest.raises(ConfigError, match="batch size"):
        GradientOptions(batch_size=0)
    reg = """
    <ir_version: 8, opset_import: ["" : 13]>
    reg (float[N, 8] x) => (float[N, 1] y)
    <float[16, 8] w1, float[16] b1, float[1, 16] w2>
    {
      h = Gemm <transB = 1> (x, w1, b1)
      r = Relu (h)
      y = Gemm <transB = 1> (r, w2)
    }
    """
    r = load(tmp_path, reg, "reg.onnx")
    with pytest.raises(ConfigError, match="class scores"):
        spa_nm.prune(r, 0.5, "taylor")


def test_cli(tmp_path, capsys):
    p = tmp_path / "m.onnx"
    onnx.save(model_from_text(MLP, **mlp_weights(dead=7)), p)
    d = tmp_path / "d.npz"
    np.savez(d, **blobs())
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["prune", str(p), "-o", str(out), "--ratio", "0.0625", "--round-to", "1",
                 "--criterion", "taylor", "--data", str(d), "--report", str(rep), "-q"])  # fmt: skip
    assert code == 0
    entry = json.loads(rep.read_text())["models"][0]
    assert entry["taylor"]["data"].startswith(str(d))
    assert entry["taylor"]["loss"] == "cross-entropy on the labels"
    assert entry["channels_removed"] == 1
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    w2 = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}["w2"]
    # the dead column 7 is the one that went: the kept columns are the others, in order
    np.testing.assert_array_equal(w2, np.delete(mlp_weights(dead=7)["w2"], 7, axis=1))
    # --data without a data-driven criterion or fine-tuning, and a missing file: exit 2
    assert main(["prune", str(p), "-o", str(out), "--ratio", "0.5", "--data", str(d)]) == 2
    bad = ["prune", str(p), "-o", str(out), "--ratio", "0.5", "--criterion", "snip"]
    assert main([*bad, "--data", str(tmp_path / "nope.npz")]) == 2
    err = capsys.readouterr().err
    assert "nope.npz: no such file" in err
