"""Calibrated one-shot N:M (spa_nm/oneshot.py, docs/nm_oneshot.md): Wanda and SparseGPT against
magnitude on real activations (scikit-learn's digits), the N:M layout, the reconstruction error
against onnxruntime, SparseGPT against independent references, the report and the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_nm
from spa_nm.errors import ConfigError, InputError
from spa_nm.nm import NMSpec, check_nm, nm_mask
from spa_nm.oneshot import Calibration, im2col, sparsegpt_prune
from spa_nm.testing import run

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("magnitude", "wanda", "sparsegpt")


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """OpenBLAS with 2 threads on a busy shared machine ran a 576x576 Cholesky 17x slower than
    with one (0.36 s vs 0.02 s): these tests are BLAS-bound."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory, digits):
    """A 64-64-32-10 ReLU MLP trained on digits by scikit-learn, as three Gemm nodes (transB=1,
    0, 1: both weight layouts) with a symbolic batch dim."""
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 60 iterations do not converge, and need not
        clf = MLPClassifier((64, 32), max_iter=60, random_state=0).fit(x[:1200], y[:1200])
    assert clf.score(x[1200:], y[1200:]) > 0.85  # a real, trained network
    w = [c.astype(np.float32) for c in clf.coefs_]  # [in, out]
    b = [c.astype(np.float32) for c in clf.intercepts_]
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(w[0].T), "w0"), numpy_helper.from_array(b[0], "b0"),
        numpy_helper.from_array(w[1], "w1"), numpy_helper.from_array(b[1], "b1"),
        numpy_helper.from_array(np.ascontiguousarray(w[2].T), "w2"), numpy_helper.from_array(b[2], "b2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="fc0"),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("Gemm", ["r0", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["logits"], transB=1, name="fc2"),
    ]
    g = helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return _save(m, tmp_path_factory.mktemp("mlp") / "digits_mlp.onnx")


def _images(x: np.ndarray, n: int) -> np.ndarray:
    """Digits as [n, 3, 32, 32] images (each 8x8 pixel a 4x4 square, the same on 3 channels)."""
    img = np.kron(x[:n].reshape(-1, 8, 8), np.ones((4, 4), np.float32))[:, None]
    return np.ascontiguousarray(np.repeat(img, 3, axis=1))


def _errors(model, pattern, data, **kw) -> dict[str, dict[str, float]]:
    out = {}
    for method in METHODS:
        _, rep = spa_nm.sparsify(model, pattern, method=method, data=data, **kw)
        assert rep["calibration"]["source"] == "data"
        out[method] = {d["node"]: d["reconstruction_error"] for d in rep["layers_sparsified"]}
    return out


# -- (1) SparseGPT <= Wanda <= magnitude on real activations -----------------------------------


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
def test_error_order_on_a_trained_gemm_mlp(digits_mlp, digits, pattern):
    model = spa_nm.load(digits_mlp)
    err = _errors(model, pattern, {"x": digits[0][:256]}, calibration_samples=256)
    assert set(err["magnitude"]) == {"fc0", "fc1", "fc2"}
    for layer, mag in err["magnitude"].items():
        wanda, sgpt = err["wanda"][layer], err["sparsegpt"][layer]
        assert 0 < sgpt <= wanda <= mag, (layer, sgpt, wanda, mag)
    # on the input pixels (several always 0 on digits) Wanda is far better than magnitude
    assert err["wanda"]["fc0"] < 0.8 * err["magnitude"]["fc0"]


def test_error_order_on_cnn_convs(digits):
    """resnet_basic (models/onnx) on 8 digit images: every Conv, and the classifier Gemm."""
    model = spa_nm.load(ROOT / "models" / "onnx" / "resnet_basic.onnx")
    err = _errors(model, "2:4", {"input": _images(digits[0], 8)}, calibration_samples=8)
    ops = {d["node"]: d["op"] for d in spa_nm.sparsify(model, "2:4")[1]["layers_sparsified"]}
    assert sum(op == "Conv" for op in ops.values()) >= 8 and "Gemm" in ops.values()
    for layer, mag in err["magnitude"].items():
        wanda, sgpt = err["wanda"][layer], err["sparsegpt"][layer]
        assert 0 < sgpt <= wanda <= mag, (layer, ops[layer], sgpt, wanda, mag)


# -- (2) layout, the error against onnxruntime, a numpy reference --------------------------------


def _one_layer(tmp_path, op, wshape, xshape, attrs, seed=0, bias=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(wshape).astype(np.float32)
    names = ["x", "w"] + (["b"] if bias else [])
    inits = [numpy_helper.from_array(w, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(wshape[0]).astype(np.float32), "b"))
    rank = 2 if op == "Gemm" else len(xshape)
    xin = ["n", *xshape[1:]] if not (op == "Gemm" and attrs.get("transA")) else [xshape[0], "n"]
    g = helper.make_graph([helper.make_node(op, names, ["y"], name="layer", **attrs)], "one",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, xin)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{k}" for k in range(rank)])],
                          inits)  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    # correlated inputs with unequal channel scales (what makes the methods differ)
    c = xshape[1] if not (op == "Gemm" and attrs.get("transA")) else xshape[0]
    mix = rng.standard_normal((c, c)).astype(np.float32) * rng.uniform(0.1, 3, c).astype(np.float32)
    base = rng.standard_normal(xshape if not (op == "Gemm" and attrs.get("transA")) else xshape[::-1]).astype(np.float32)
    x = np.einsum("nc...,cd->nd...", base, mix).astype(np.float32)
    if op == "Gemm" and attrs.get("transA"):
        x = np.ascontiguousarray(x.T)
    return spa_nm.load(_save(m, tmp_path / "one.onnx")), x


LAYERS = [  # op, weight, input, attributes, reduction axis of the weight (nm_axis_of)
    ("Gemm", (8, 16), (40, 16), {"transB": 1}, 1),
    ("Gemm", (16, 8), (40, 16), {}, 0),
    ("Gemm", (16, 8), (16, 40), {"transA": 1}, 0),
    ("MatMul", (16, 8), (5, 7, 16), {}, 0),
    ("Conv", (8, 8, 3, 3), (2, 8, 9, 9), {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, 1),
    ("Conv", (8, 4, 3, 3), (2, 8, 9, 9), {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, 1),
    ("Conv", (6, 8, 3), (3, 8, 11), {"auto_pad": "SAME_LOWER"}, 1),
    # stride = kernel: no overlap-add, so the output error is the products' error
    ("ConvTranspose", (8, 3, 2, 2), (2, 8, 5, 5), {"strides": [2, 2]}, 0),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("op", "wshape", "xshape", "attrs", "axis"), LAYERS)
def test_layout_and_error_match_onnxruntime(tmp_path, method, op, wshape, xshape, attrs, axis):
    """Every block of M along the reduction axis has <= N non-zeros, and the reported
    reconstruction error (from XᵀX) is ‖WX − ŴX‖/‖WX‖ measured on onnxruntime's outputs."""
    model, x = _one_layer(tmp_path, op, wshape, xshape, attrs)
    spec = NMSpec(2, 4)
    sparse, rep = spa_nm.sparsify(model, spec, method=method, data={"x": x})
    (d,) = rep["layers_sparsified"]
    assert d["axis"] == axis and d["method"] == method
    w = sparse.graph.initializers["w"].const_value.numpy()
    assert check_nm(w, axis, spec)
    assert abs(d["sparsity"] - 0.5) < 1e-9  # no block lost more than asked
    y0, y1 = run(model, {"x": x})[0], run(sparse, {"x": x})[0]
    measured = np.linalg.norm(y0 - y1) / np.linalg.norm(y0)
    assert d["reconstruction_error"] == pytest.approx(measured, rel=1e-4, abs=1e-6)
    if method == "magnitude":
        orig = model.graph.initializers["w"].const_value.numpy()
        np.testing.assert_array_equal(w, np.where(nm_mask(orig, axis, spec), orig, 0))


def test_wanda_single_gemm_matches_numpy_reference(tmp_path):
    """Wanda on a Gemm (transB=1, bias): the mask recomputed here from |W|·‖X_j‖ and the
    onnxruntime output of the written model equal x @ (mask·W)ᵀ + b."""
    model, x = _one_layer(tmp_path, "Gemm", (12, 32), (50, 32), {"transB": 1}, seed=3, bias=True)
    w = model.graph.initializers["w"].const_value.numpy()
    b = model.graph.initializers["b"].const_value.numpy()
    sparse, _ = spa_nm.sparsify(model, "2:8", method="wanda", data={"x": x})
    score = np.abs(w.astype(np.float64)) * np.sqrt((x.astype(np.float64) ** 2).sum(axis=0))
    mask = np.zeros_like(w, dtype=bool)
    for r in range(w.shape[0]):
        for s in range(0, w.shape[1], 8):
            keep = np.argsort(-score[r, s : s + 8], kind="stable")[:2]
            mask[r, s + keep] = True
    got = sparse.graph.initializers["w"].const_value.numpy()
    np.testing.assert_array_equal(got, np.where(mask, w, 0))
    p = tmp_path / "sparse.onnx"
    spa_nm.save(sparse, p)
    (y,) = run(spa_nm.load(p), {"x": x})
    np.testing.assert_allclose(y, x @ np.where(mask, w, 0).T + b, rtol=1e-5, atol=1e-5)


def _sparsegpt_unblocked(w, gram, n, m, damp=0.01):
    """SparseGPT without lazy batches: after each column the whole rest of W is updated."""
    W = w.astype(np.float64).copy()
    H = 2 * gram.astype(np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(len(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    pruned = np.zeros(W.shape, bool)
    for j in range(W.shape[1]):
        if j % m == 0:
            for r in range(W.shape[0]):
                score = W[r, j : j + m] ** 2 / np.diag(U)[j : j + m] ** 2
                pruned[r, j + np.argsort(-score, kind="stable")[n:]] = True
        q = np.where(pruned[:, j], 0, W[:, j])
        err = (W[:, j] - q) / U[j, j]
        W[:, j:] -= np.outer(err, U[j, j:])
        W[:, j] = q
    return W


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8)])
def test_sparsegpt_blocks_equal_the_unblocked_sweep(n, m):
    rng = np.random.default_rng(n * 10 + m)
    x = rng.standard_normal((300, 48)) @ rng.standard_normal((48, 48))
    x[:, 5] = 0  # a dead input
    w = rng.standard_normal((7, 48))
    g = x.T @ x
    ref = _sparsegpt_unblocked(w, g, n, m)
    for bs in (128, 16, m):
        got, lam = sparsegpt_prune(w, g, NMSpec(n, m), block_size=bs)
        assert lam == 0.01
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    blocks = got.reshape(-1, m)
    assert np.all(np.count_nonzero(blocks, axis=1) <= n)
    assert np.all(got[:, 5] == 0)
    kept = got != 0
    assert not np.allclose(got[kept], w[kept])  # compensation moved the kept weights


def test_sparsegpt_one_pruned_weight_is_the_least_squares_update():
    """3:4 on one block: each row prunes one weight p; SparseGPT leaves the columns before p
    alone and gives the later ones the least-squares compensation w_p·H[>p,>p]⁻¹H[>p,p]
    (H the dampened 2XᵀX), the closed form of OBS for this case."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 4)) @ rng.standard_normal((4, 4))
    w = rng.standard_normal((6, 4))
    g = x.T @ x
    got, _ = sparsegpt_prune(w, g, NMSpec(3, 4))
    H = 2 * g + 0.01 * np.mean(np.diag(2 * g)) * np.eye(4)
    for r in range(6):
        (p,) = np.flatnonzero(got[r] == 0)
        want = w[r].copy()
        want[p] = 0
        want[p + 1 :] += w[r, p] * np.linalg.solve(H[p + 1 :, p + 1 :], H[p + 1 :, p])
        np.testing.assert_allclose(got[r], want, rtol=1e-10, atol=1e-12)


def test_sparsegpt_on_isotropic_inputs_is_magnitude():
    """XᵀX = c·I: U is diagonal with equal entries, so nothing is compensated and the mask is
    the magnitude mask."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 16))
    got, _ = sparsegpt_prune(w, 3.0 * np.eye(16), NMSpec(2, 4))
    np.testing.assert_allclose(got, np.where(nm_mask(w, 1, NMSpec(2, 4)), w, 0), rtol=1e-12)


def test_im2col_is_the_conv():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    cols = im2col(x, (3, 2), [2, 1], [1, 2], [1, 0, 0, 1])
    wm = w.reshape(4, 3, 6).transpose(0, 2, 1).reshape(4, 18)  # (tap, channel) columns
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 0, 1], strides=[2, 1], dilations=[1, 2])],
                          "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])  # fmt: skip
    import onnxruntime as ort

    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose((cols @ wm.T).reshape(2, *y.shape[2:], 4).transpose(0, 3, 1, 2), y, rtol=1e-4, atol=1e-5)


# -- (3) the input is unchanged; Constant-node and shared weights ------------------------------


def _digest(model) -> str:
    from spa_nm.io import to_proto_with_data

    return hashlib.sha256(to_proto_with_data(model).SerializeToString()).hexdigest()


@pytest.mark.parametrize("method", METHODS)
def test_input_model_unchanged(digits_mlp, digits, method):
    model = spa_nm.load(digits_mlp)
    before = _digest(model)
    sparse, rep = spa_nm.sparsify(model, "2:4", method=method, data={"x": digits[0][:64]}, sequential=True)
    assert _digest(model) == before
    assert _digest(sparse) != before and rep["sparsity"] == 0.5


CONST_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
c (float[N, 16] x) => (float[N, 4] y)
<float[16, 8] wa>
{
  wc = Constant <value = float[8, 4] {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 1.3, -1.4, 1.5, 1.6,
                                     -0.1, 0.2, -0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2, 1.3, 1.4, -1.5, 1.6}> ()
  a = MatMul (x, wa)
  r = Relu (a)
  y = MatMul (r, wc)
}
"""


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_constant_node_weights(tmp_path, method):
    from tests.helpers import model_from_text

    model = spa_nm.load(_save(model_from_text(CONST_MODEL), tmp_path / "c.onnx"))
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    sparse, rep = spa_nm.sparsify(model, "2:4", method=method, data={"x": x})
    assert {d["node"] for d in rep["layers_sparsified"]} == {"MatMul_1", "MatMul_3"}
    const = next(n for n in sparse.graph if n.op_type == "Constant")
    wc = const.attributes["value"].value.numpy()
    assert check_nm(wc, 0, NMSpec(2, 4)) and np.count_nonzero(wc) == 16
    assert all(d["reconstruction_error"] is not None for d in rep["layers_sparsified"])
    run(sparse, {"x": x})


SHARED = """
<ir_version: 8, opset_import: ["" : 13]>
s (float[N, 8] x) => (float[N, 8] y)
<float[8, 8] w>
{
  a = MatMul (x, w)
  y = MatMul (a, w)
}
"""


def test_shared_weight_takes_magnitude_with_a_note(tmp_path):
    from tests.helpers import model_from_text

    model = spa_nm.load(_save(model_from_text(SHARED), tmp_path / "s.onnx"))
    sparse, rep = spa_nm.sparsify(model, "2:4", method="sparsegpt", calibration_samples=16)
    first, second = rep["layers_sparsified"]
    assert first["method"] == "magnitude" and "several layers" in first["note"]
    w = model.graph.initializers["w"].const_value.numpy()
    np.testing.assert_array_equal(sparse.graph.initializers["w"].const_value.numpy(), np.where(nm_mask(w, 0, NMSpec(2, 4)), w, 0))
    assert second["sparsity"] == 0.5


# -- (4) the calibration report ----------------------------------------------------------------


def test_synthetic_calibration_is_reported(digits_mlp):
    model = spa_nm.load(digits_mlp)
    _, rep = spa_nm.sparsify(model, "2:4", method="wanda", calibration_samples=20)
    assert rep["method"] == "wanda"
    assert rep["calibration"] == {"source": "synthetic", "samples": 20, "variant": "dense", "passes": 1}
    assert all(d["tokens"] == 20 and d["reconstruction_error"] > 0 for d in rep["layers_sparsified"])
    # fixed batch dim 1 (models/onnx/mlp.onnx): 5 runs of one sample
    _, rep = spa_nm.sparsify(spa_nm.load(ROOT / "models" / "onnx" / "mlp.onnx"), "2:4", method="sparsegpt", calibration_samples=5)
    assert rep["calibration"]["source"] == "synthetic" and rep["calibration"]["samples"] == 5


def test_data_calibration_report_and_magnitude_errors(digits_mlp, digits, tmp_path):
    np.savez(tmp_path / "calib.npz", x=digits[0][:100])
    model = spa_nm.load(digits_mlp)
    plain, rep0 = spa_nm.sparsify(model, "2:4")
    assert "calibration" not in rep0 and rep0["method"] == "magnitude"
    assert all("reconstruction_error" not in d for d in rep0["layers_sparsified"])
    mag, rep = spa_nm.sparsify(model, "2:4", data=tmp_path / "calib.npz", calibration_samples=64)
    assert rep["calibration"] == {"source": "data", "samples": 64, "variant": "dense", "passes": 1}
    assert all(d["reconstruction_error"] > 0 and d["method"] == "magnitude" for d in rep["layers_sparsified"])
    assert rep["reconstruction_error"]["layers_measured"] == 3
    for name in ("w0", "w1", "w2"):  # the data only measures: the weights are magnitude's
        np.testing.assert_array_equal(mag.graph.initializers[name].const_value.numpy(),
                                      plain.graph.initializers[name].const_value.numpy())  # fmt: skip


def test_sequential_variant(digits_mlp, digits):
    model = spa_nm.load(digits_mlp)
    data = {"x": digits[0][:128]}
    _, dense = spa_nm.sparsify(model, "2:4", method="sparsegpt", data=data)
    seq_model, seq = spa_nm.sparsify(model, "2:4", method="sparsegpt", data=data, sequential=True)
    assert seq["calibration"]["variant"] == "sequential" and seq["calibration"]["passes"] == 3
    d = {e["node"]: e["reconstruction_error"] for e in dense["layers_sparsified"]}
    s = {e["node"]: e["reconstruction_error"] for e in seq["layers_sparsified"]}
    assert s["fc0"] == d["fc0"]  # the first layer sees the same inputs
    assert s["fc1"] != d["fc1"]  # the next ones see the sparsified predecessors' outputs
    # and it is the better model end to end on the same data
    x = digits[0][:128]
    (ref,) = run(model, {"x": x})
    (got_seq,) = run(seq_model, {"x": x})
    (got_dense,) = run(spa_nm.sparsify(model, "2:4", method="sparsegpt", data=data)[0], {"x": x})
    assert np.linalg.norm(got_seq - ref) < np.linalg.norm(got_dense - ref)


def test_bad_calibration_inputs(digits_mlp, tmp_path):
    model = spa_nm.load(digits_mlp)
    np.savez(tmp_path / "bad.npz", a=np.zeros((4, 64), np.float32), b=np.zeros((4, 64), np.float32))
    with pytest.raises(InputError, match="no arrays for the model inputs"):
        spa_nm.sparsify(model, "2:4", method="wanda", data=tmp_path / "bad.npz")
    with pytest.raises(InputError, match="no such file"):
        spa_nm.sparsify(model, "2:4", method="wanda", data=tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="unknown N:M method"):
        spa_nm.sparsify(model, "2:4", method="obs")
    with pytest.raises(ConfigError, match="positive integer"):
        Calibration(samples=0)
    fixed = spa_nm.load(ROOT / "models" / "onnx" / "vgg_bn.onnx")  # batch dim 1
    with pytest.raises(InputError, match="0 samples"):
        spa_nm.sparsify(fixed, "2:4", method="wanda", data={"input": np.zeros((0, 3, 32, 32), np.float32)})


def test_huge_layer_falls_back_to_wanda(digits_mlp, digits):
    model = spa_nm.load(digits_mlp)
    calib = Calibration(data={"x": digits[0][:64]}, max_columns=32)
    _, rep = spa_nm.sparsify(model, "2:4", method="sparsegpt", calibration=calib)
    by = {d["node"]: d for d in rep["layers_sparsified"]}
    assert by["fc0"]["method"] == "wanda" and "64 input columns > 32" in by["fc0"]["note"]
    assert by["fc0"]["reconstruction_error"] is None
    assert by["fc2"]["method"] == "sparsegpt" and by["fc2"]["reconstruction_error"] > 0


def test_import_stays_light():
    code = "import sys, spa_nm, spa_nm.oneshot; print(any(m in sys.modules for m in ('torch', 'onnxruntime')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# -- (5) the CLI -------------------------------------------------------------------------------


def test_cli_sparsify_wanda_with_data(digits_mlp, digits, tmp_path):
    import onnxruntime as ort

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=digits[0][:64])
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sparsify", str(digits_mlp), "-o", str(out), "--pattern", "2:4",
                        "--method", "wanda", "--data", str(calib), "--calibration-samples", "32", "--report", str(rep), "-q"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(rep.read_text())["models"]
    assert entry["status"] == "ok" and entry["method"] == "wanda"
    assert entry["calibration"] == {"source": "data", "samples": 32, "variant": "dense", "passes": 1}
    assert all(d["reconstruction_error"] > 0 for d in entry["layers_sparsified"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": digits[0][:5]})
    assert y.shape == (5, 10)
    w = onnx.numpy_helper.to_array(next(t for t in onnx.load(out).graph.initializer if t.name == "w0"))
    assert check_nm(w, 1, NMSpec(2, 4))
    bad = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sparsify", str(digits_mlp), "-o", str(tmp_path / "x.onnx"),
                          "--pattern", "2:4", "--method", "obs"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and not (tmp_path / "x.onnx").exists()


QKV = """
<ir_version: 8, opset_import: ["" : 13]>
qkv (float[N, T, 16] x) => (float[N, T, 8] q, float[N, T, 8] k, float[N, T, 4] v)
<float[16, 8] wq, float[16, 8] wk, float[16, 4] wv>
{
  q = MatMul (x, wq)
  k = MatMul (x, wk)
  v = MatMul (x, wv)
}
"""


@pytest.mark.parametrize("budget", [1 << 30, 1])
def test_layers_of_one_input_match_sparsegpt_on_numpy_xtx(tmp_path, budget):
    """Q/K/V projections of one 3-D input: each weight is SparseGPT on XᵀX computed here from
    the data; their one XᵀX is collected once, in one pass even when it exceeds the budget."""
    from tests.helpers import model_from_text

    model = spa_nm.load(_save(model_from_text(QKV), tmp_path / "qkv.onnx"))
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 5, 16)) @ rng.standard_normal((16, 16))).astype(np.float32)
    calib = Calibration(data={"x": x}, max_gram_bytes=budget)
    sparse, rep = spa_nm.sparsify(model, "2:4", method="sparsegpt", calibration=calib)
    assert rep["calibration"]["passes"] == 1
    flat = x.reshape(-1, 16).astype(np.float64)
    for name in ("wq", "wk", "wv"):
        w = model.graph.initializers[name].const_value.numpy()
        want, _ = sparsegpt_prune(w.T, flat.T @ flat, NMSpec(2, 4))
        got = sparse.graph.initializers[name].const_value.numpy()
        np.testing.assert_allclose(got, want.T.astype(np.float32), rtol=1e-4, atol=1e-5)
        assert check_nm(got, 0, NMSpec(2, 4))
    feeds = {"x": x}
    for out, name in zip(run(sparse, feeds), ("wq", "wk", "wv"), strict=True):
        np.testing.assert_allclose(out, x @ sparse.graph.initializers[name].const_value.numpy(), rtol=1e-4, atol=1e-4)


def test_memory_budget_splits_passes_with_the_same_result(digits_mlp, digits):
    model = spa_nm.load(digits_mlp)
    data = {"x": digits[0][:64]}
    one, rep1 = spa_nm.sparsify(model, "2:4", method="sparsegpt", data=data)
    split, rep3 = spa_nm.sparsify(model, "2:4", method="sparsegpt", calibration=Calibration(data=data, max_gram_bytes=1))
    assert rep1["calibration"]["passes"] == 1 and rep3["calibration"]["passes"] == 3
    for name in ("w0", "w1", "w2"):  # every pass sees the dense model
        np.testing.assert_array_equal(one.graph.initializers[name].const_value.numpy(),
                                      split.graph.initializers[name].const_value.numpy())  # fmt: skip
